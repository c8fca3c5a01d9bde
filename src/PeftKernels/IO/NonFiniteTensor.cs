// Non-finite values found while loading a model or an adapter. Loading never refuses them (a
// checkpoint may hold NaN on purpose, and PyTorch loads it too) but never hides them either: every
// tensor with a NaN or an infinity is listed with its counts, for the caller to warn about. A 4-bit
// weight is checked through its scales (absmax, nested absmax and offset): one NaN scale makes a
// whole block of the dequantized weight NaN. The scan is one vectorised pass over the exponent bits
// (all ones = NaN or ±Inf in fp32, bf16 and fp16 alike); counting runs only when that pass found one.
using System.Globalization;
using System.Numerics;
using System.Runtime.InteropServices;

namespace PeftKernels.IO;

/// <summary>A loaded tensor that holds NaN or infinite values.</summary>
/// <param name="File">The file it was read from.</param>
/// <param name="Name">The tensor (for a 4-bit weight, its scale tensor, e.g. <c>….weight.absmax</c>).</param>
/// <param name="NaN">NaN elements.</param>
/// <param name="PositiveInfinity">+Inf elements.</param>
/// <param name="NegativeInfinity">−Inf elements.</param>
/// <param name="Count">All elements of the tensor.</param>
public sealed record NonFiniteTensor(string File, string Name, long NaN, long PositiveInfinity, long NegativeInfinity, long Count)
{
    /// <summary>"tensor 'NAME' in FILE has 3 NaN, 1 +Inf of 4096 elements".</summary>
    public override string ToString()
    {
        var parts = new List<string>();
        if (NaN > 0)
        {
            parts.Add(string.Create(CultureInfo.InvariantCulture, $"{NaN} NaN"));
        }

        if (PositiveInfinity > 0)
        {
            parts.Add(string.Create(CultureInfo.InvariantCulture, $"{PositiveInfinity} +Inf"));
        }

        if (NegativeInfinity > 0)
        {
            parts.Add(string.Create(CultureInfo.InvariantCulture, $"{NegativeInfinity} -Inf"));
        }

        return string.Create(CultureInfo.InvariantCulture, $"tensor '{Name}' in {File} has {string.Join(", ", parts)} of {Count} elements");
    }

    /// <summary>The non-finite counts of <paramref name="values"/> (tensor <paramref name="name"/> of <paramref name="file"/>); empty when all are finite.</summary>
    public static NonFiniteTensor[] Scan(string file, string name, float[] values) =>
        One(file, name, MemoryMarshal.Cast<float, uint>(values), 0x7F800000u, 0x80000000u);

    /// <summary>The non-finite counts of <paramref name="p"/>'s stored values (4-bit: its scales); empty when all are finite.</summary>
    internal static NonFiniteTensor[] Scan(string file, string name, Tensor p)
    {
        switch (p.DType)
        {
            case TensorDType.F32:
                return Scan(file, name, p.Data);
            case TensorDType.BF16:
                return One(file, name, p.Bf16Bits, (ushort)0x7F80, (ushort)0x8000);
            case TensorDType.F16:
                return One(file, name, MemoryMarshal.Cast<Half, ushort>(p.F16Values), (ushort)0x7C00, (ushort)0x8000);
            default:
                var q = p.Quantized;
                return q.IsNested
                    ? [.. Scan(file, name + ".nested_absmax", q.NestedAbsmax!), .. Scan(file, name + ".quant_state (nested offset)", [q.NestedOffset])]
                    : Scan(file, name + ".absmax", q.Absmax!);
        }
    }

    private static NonFiniteTensor[] One<TU>(string file, string name, ReadOnlySpan<TU> bits, TU exponent, TU sign)
        where TU : unmanaged, IBinaryInteger<TU>, IUnsignedNumber<TU>
    {
        if (!AnyAllOnes(bits, exponent))
        {
            return [];
        }

        long nan = 0, plus = 0, minus = 0;
        foreach (var b in bits)
        {
            if ((b & exponent) != exponent)
            {
                continue;
            }

            if ((b & ~(exponent | sign)) != TU.Zero)
            {
                nan++;
            }
            else if ((b & sign) == TU.Zero)
            {
                plus++;
            }
            else
            {
                minus++;
            }
        }

        return [new NonFiniteTensor(file, name, nan, plus, minus, bits.Length)];
    }

    /// <summary>Whether any element has every bit of <paramref name="exponent"/> set (NaN or ±Inf).</summary>
    private static bool AnyAllOnes<TU>(ReadOnlySpan<TU> bits, TU exponent)
        where TU : unmanaged, IBinaryInteger<TU>, IUnsignedNumber<TU>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && bits.Length >= Vector<TU>.Count)
        {
            var mask = new Vector<TU>(exponent);
            var vectors = MemoryMarshal.Cast<TU, Vector<TU>>(bits);
            foreach (var v in vectors)
            {
                if (Vector.EqualsAny(v & mask, mask))
                {
                    return true;
                }
            }

            i = vectors.Length * Vector<TU>.Count;
        }

        for (; i < bits.Length; i++)
        {
            if ((bits[i] & exponent) == exponent)
            {
                return true;
            }
        }

        return false;
    }
}
