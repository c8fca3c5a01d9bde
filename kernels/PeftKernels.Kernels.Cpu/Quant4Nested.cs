// Double quantization of the 4-bit absmax (bitsandbytes' compress_statistics):
//   offset = mean(absmax); codes = 8-bit blockwise quantization (blocksize 256, the dynamic
//   map, the same absmax / reciprocal / midpoint rules as 4-bit) of absmax − offset;
//   absmax' = dyn[code] · nested[i / 256] + offset  (a product then a sum, each rounded).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class Quant4
{
    /// <summary>Double quantization: returns the offset (mean of absmax) and writes one 8-bit code per absmax and one fp32 scale per 256.</summary>
    public static float QuantizeNested(ReadOnlySpan<float> absmax, Span<byte> codes, Span<float> nestedAbsmax)
    {
        Check.Length("codes", codes.Length, absmax.Length, "absmax length");
        Check.Length("nestedAbsmax", nestedAbsmax.Length, BlockCount(absmax.Length, NestedBlocksize), "ceil(absmax length / 256)");
        if (absmax.Length == 0)
        {
            return 0f;
        }

        double sum = 0;
        foreach (float a in absmax)
        {
            sum += a;
        }

        float offset = (float)(sum / absmax.Length);
        var centered = new float[absmax.Length];
        for (int i = 0; i < centered.Length; i++)
        {
            centered[i] = absmax[i] - offset;
        }

        var search = Quant4Codes.DynamicSearch;
        for (int b = 0; b < nestedAbsmax.Length; b++)
        {
            int start = b * NestedBlocksize, end = Math.Min(centered.Length, start + NestedBlocksize);
            float reciprocal = BlockScale(centered.AsSpan(start, end - start), end - start < NestedBlocksize, out float stored, out float clamped);
            nestedAbsmax[b] = stored;
            for (int i = start; i < end; i++)
            {
                codes[i] = search.Code(Scale(centered[i], end - start < NestedBlocksize, reciprocal, clamped));
            }
        }

        return offset;
    }

    /// <summary>absmax[i] = dyn[codes[i]] · nested[i / 256] + offset (a product then a sum, each rounded).</summary>
    public static void DequantizeNested(ReadOnlySpan<byte> codes, ReadOnlySpan<float> nestedAbsmax, float offset, Span<float> absmax)
    {
        Check.Length("absmax", absmax.Length, codes.Length, "codes length");
        Check.Length("nestedAbsmax", nestedAbsmax.Length, BlockCount(codes.Length, NestedBlocksize), "ceil(codes length / 256)");
        var dyn = Quant4Codes.Dynamic;
        for (int i = 0; i < codes.Length; i++)
        {
            float product = dyn[codes[i]] * nestedAbsmax[i / NestedBlocksize];
            absmax[i] = Add(product, offset);
        }
    }

    // Kept out of line so the JIT can never contract the product and the sum into an FMA.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float Add(float a, float b) => a + b;
}
