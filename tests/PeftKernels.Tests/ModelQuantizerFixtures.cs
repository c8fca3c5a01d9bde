// Small generated checkpoints for the ModelQuantizer tests: a Llama-like mix of projections in
// F32/BF16/F16, an embedding, 2-D and 1-D norms, lm_head, a bias, a 3-D weight-like tensor and an
// integer tensor; and the checks every test shares (byte-identical copies, the 4-bit error bound).
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

internal static class ModelQuantizerFixtures
{
    public const string Q = "model.layers.0.self_attn.q_proj.weight";
    public const string K = "model.layers.0.self_attn.k_proj.weight";
    public const string Up = "model.layers.0.mlp.up_proj.weight";
    public const string Embed = "model.embed_tokens.weight";
    public const string Norm = "model.norm.weight";
    public const string LayerNorm = "model.layers.0.input_layernorm.weight";
    public const string LmHead = "lm_head.weight";
    public const string Bias = "model.layers.0.self_attn.q_proj.bias";
    public const string Experts = "model.layers.0.mlp.experts.weight";
    public const string Positions = "model.position_ids";

    public static readonly Dictionary<string, string> Metadata = new() { ["format"] = "pt" };

    /// <summary>
    /// Q: F32 [48, 80] whose first block is all zeros; K: BF16 [33, 65] (odd count, partial last
    /// block); Up: F16 [16, 72]; Norm is 2-D on purpose so that only its name keeps it unquantized.
    /// </summary>
    public static List<SafeTensor> Mixed(int seed = 1)
    {
        var q = TestUtil.Random(48 * 80, seed, range: 2f);
        Array.Clear(q, 0, 64);
        return
        [
            SafeTensor.FromFloat32(Embed, TestUtil.Random(50 * 32, seed + 1), 50, 32),
            SafeTensor.FromBf16Bits(LayerNorm, TestUtil.RandomBf16(80, seed + 2), 80),
            SafeTensor.FromFloat32(Q, q, 48, 80),
            SafeTensor.FromFloat32(Bias, TestUtil.Random(48, seed + 3), 48),
            SafeTensor.FromBf16Bits(K, TestUtil.RandomBf16(33 * 65, seed + 4), 33, 65),
            SafeTensor.FromHalf(Up, [.. TestUtil.Random(16 * 72, seed + 5, range: 4f).Select(v => (Half)v)], 16, 72),
            SafeTensor.FromFloat32(Experts, TestUtil.Random(2 * 8 * 64, seed + 6), 2, 8, 64),
            new SafeTensor(Positions, SafeTensorDType.I64, [3L], Enumerable.Range(0, 24).Select(i => (byte)i).ToArray()),
            SafeTensor.FromFloat32(Norm, TestUtil.Random(32, seed + 7), 1, 32),
            SafeTensor.FromFloat32(LmHead, TestUtil.Random(50 * 32, seed + 8), 50, 32),
        ];
    }

    public static void WriteMixed(string path, int seed = 1) => SafeTensorsWriter.Write(path, Mixed(seed), Metadata);

    public static string DTypeName(SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.BF16 => "bfloat16",
        SafeTensorDType.F16 => "float16",
        _ => "float32",
    };

    /// <summary>What ModelQuantizer must have stored for <paramref name="name"/>: the kernel's quantization of the exact fp32 widening.</summary>
    public static QuantizedWeight Expected(SafeTensorsFile input, string name, Quant4Type type, int blocksize, bool doubleQuant)
    {
        var info = input.GetInfo(name);
        return QuantizedWeight.Quantize(input.ReadFloat32(name), [.. info.Shape.Select(d => (int)d)], type, blocksize, doubleQuant, DTypeName(info.DType));
    }

    /// <summary>Asserts that <paramref name="output"/> holds tensor <paramref name="name"/> of <paramref name="input"/> with the same dtype, shape and bytes.</summary>
    public static void AssertCopied(SafeTensorsFile input, SafeTensorsFile output, string name)
    {
        var a = input.GetInfo(name);
        var b = output.GetInfo(name);
        Assert.Equal(a.DType, b.DType);
        Assert.Equal(a.Shape, b.Shape);
        Assert.Equal(input.GetBytes(name).ToArray(), output.GetBytes(name).ToArray());
    }

    /// <summary>Half the largest gap between neighbouring values of the 4-bit code table.</summary>
    public static double HalfLargestGap(Quant4Type type)
    {
        float[] sorted = [.. Quant4Codes.Table(type).ToArray().Order()];
        return sorted.Zip(sorted.Skip(1), (lo, hi) => (double)hi - lo).Max() / 2;
    }

    /// <summary>
    /// Every element obeys |dequant − x| ≤ halfGap · absmax + |absmax − absmax'| (+ fp32 rounding),
    /// with absmax the block's true max |x| and absmax' the stored (possibly double-quantized) scale:
    /// the code nearest to x/absmax is within halfGap, and |code| ≤ 1 bounds the scale's own error.
    /// Returns the largest |error|.
    /// </summary>
    public static double AssertWithinBound(float[] original, float[] restored, QuantizedWeight weight)
    {
        double halfGap = HalfLargestGap(weight.Type), largest = 0;
        float[] scales = weight.AbsmaxFp32();
        for (int b = 0; b < scales.Length; b++)
        {
            int start = b * weight.Blocksize, end = Math.Min(start + weight.Blocksize, original.Length);
            double absmax = 0;
            for (int i = start; i < end; i++)
            {
                absmax = Math.Max(absmax, Math.Abs(original[i]));
            }

            double bound = (halfGap * absmax) + Math.Abs(absmax - scales[b]) + (1e-6 * absmax);
            for (int i = start; i < end; i++)
            {
                double error = Math.Abs((double)restored[i] - original[i]);
                Assert.True(error <= bound, $"element {i} (block {b}): |{restored[i]} - {original[i]}| = {error} > bound {bound}");
                largest = Math.Max(largest, error);
            }
        }

        return largest;
    }

    public static long TotalBytes(SafeTensorsFile file) => file.Names.Sum(n => file.GetInfo(n).ByteLength);
}
