using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Native;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The native one-pass pair packer (peft_bf16_pack_pairs, used for plain row-major A and transposed B) against
/// the managed route it replaces (fp32 pack, then Bf16Round.ToPairs in place): the packed words must be equal
/// bit for bit, including NaN, infinities, signed zeros, denormals (not flushed) and rounding ties, odd kc and
/// strips with fewer rows than their width (zero rows).
/// </summary>
public unsafe class Bf16PackTests
{
    [Avx512Bf16Fact]
    public void NativePairPackerMatchesTheManagedRounding()
    {
        Assert.True(NativeBf16.PackPairs != null, "AVX512-BF16 is available but the pair packer was not loaded");
        foreach (int width in new[] { 12, 24, 32 })
        {
            foreach (int rows in new[] { 1, 5, width })
            {
                foreach (int kc in new[] { 1, 2, 3, 31, 32, 33, 64, 100 })
                {
                    Check(width, rows, kc, seed: (width * 1000) + (rows * 100) + kc);
                }
            }
        }
    }

    private static void Check(int width, int rows, int kc, int seed)
    {
        int ld = kc + 3;
        var src = TestUtil.Random(rows * ld, seed);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, -0f, 1e-40f, -3e-39f,
            BitConverter.UInt32BitsToSingle(0x3F808000), BitConverter.UInt32BitsToSingle(0x3F818000), BitConverter.UInt32BitsToSingle(0x7F7FFFFF)];
        for (int i = 0; i < specials.Length && i < src.Length; i++)
        {
            src[(i * 7) % src.Length] = specials[i];
        }

        int words = (kc + 1) / 2 * width;
        var expected = new float[kc * width];
        var actual = new uint[words];
        Array.Fill(actual, 0xDEADBEEFu);
        fixed (float* s = src)
        fixed (float* e = expected)
        fixed (uint* a = actual)
        {
            new DenseA(s, ld, false).Pack(e, 0, rows, 0, kc, width);
            Bf16Round.ToPairs(e, kc, width);
            NativeBf16.PackPairs(s, ld, rows, kc, width, a);
            for (int w = 0; w < words; w++)
            {
                uint want = ((uint*)e)[w];
                Assert.True(want == a[w], $"width={width} rows={rows} kc={kc}: word {w} (pair {w / width}, row {w % width}) is {a[w]:X8}, managed {want:X8}");
            }
        }
    }
}
