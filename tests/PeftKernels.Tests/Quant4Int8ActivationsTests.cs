// The vectorized activation quantization of the integer 4-bit GEMV (Quant4Int8Activations.Pairs,
// reached through Quant4Int8Gemv.QuantizeRows on the 512-bit layout) against the scalar loop it
// replaces for paired chunks: q and the scales bit for bit, for 1..4 rows, odd chunk counts (the
// last chunk stays scalar), an all-zero chunk, values whose scaled product is an exact half (round
// to even), large and tiny magnitudes, and a row with a NaN (left to the scalar loop).
using System.Runtime.Intrinsics.X86;
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class Quant4Int8ActivationsTests
{
    private static void SameAsScalar(float[] x, int n, int inF, string what)
    {
        int scales = (n * (inF / 32)) + (n * (inF / 32) * 8);
        var q = new sbyte[n * inF];
        var sx = Enumerable.Repeat(float.NaN, scales).ToArray();
        var qRef = new sbyte[n * inF];
        var sxRef = Enumerable.Repeat(float.NaN, scales).ToArray();
        Quant4Int8Gemv.QuantizeRows(x, n, inF, q, sx, pairs: true);
        Quant4Int8Gemv.QuantizeRows(x, n, inF, qRef, sxRef, pairs: true, useScalar: true);
        for (int i = 0; i < q.Length; i++)
        {
            Assert.True(q[i] == qRef[i], $"{what}: q[{i}] = {q[i]}, scalar {qRef[i]}");
        }

        for (int i = 0; i < sx.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(sx[i]) == BitConverter.SingleToInt32Bits(sxRef[i]), $"{what}: sx[{i}] = {sx[i]:R}, scalar {sxRef[i]:R}");
        }
    }

    [Fact]
    public void VectorPairsEqualTheScalarLoopBitForBit()
    {
        Assert.True(!Avx512F.IsSupported || Quant4Int8Activations.IsSupported);
        int seed = 3;
        foreach (var (n, inF) in new[] { (1, 32), (1, 64), (1, 96), (2, 768), (3, 800), (4, 2048), (1, 224) })
        {
            foreach (float magnitude in new[] { 1f, 3e4f, 1e-30f })
            {
                var x = TestUtil.Random(n * inF, seed++, magnitude);
                if (inF >= 96)
                {
                    Array.Clear(x, 32, 32); // an all-zero chunk: scale 0, q 0
                }

                SameAsScalar(x, n, inF, $"n {n} in {inF} magnitude {magnitude}");
            }
        }
    }

    [Fact]
    public void ExactHalvesRoundToEvenAsTheScalarLoop()
    {
        // max 127 → inverse 1: the products are the values themselves, halves included (±0.5, 2.5, −3.5, 126.5).
        var x = new float[128];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = ((i % 64) - 32) + 0.5f;
        }

        x[0] = 127f;
        x[32] = -127f;
        x[64] = 127f;
        x[96] = 127f;
        SameAsScalar(x, 1, 128, "halves");
        var q = new sbyte[128];
        var sx = new float[4 + 32];
        Quant4Int8Gemv.QuantizeRows(x, 1, 128, q, sx, pairs: true);
        Assert.Equal(1f, sx[0]);
        Assert.Equal(-30, q[1]); // evens of chunk 0 first: x[2] = −29.5 → −30
        Assert.Equal(-28, q[2]); // x[4] = −27.5 → −28
        Assert.Equal(-30, q[32]); // odds of chunk 0 from byte 32: x[1] = −30.5 → −30
        Assert.Equal(-28, q[33]); // x[3] = −28.5 → −28
    }

    [Fact]
    public void RowWithNaNGoesToTheScalarLoop()
    {
        var x = TestUtil.Random(2 * 256, 11);
        x[256 + 70] = float.NaN;
        SameAsScalar(x, 2, 256, "NaN in row 1");
        var q = new sbyte[512];
        var sx = new float[16 + 128];
        Quant4Int8Gemv.QuantizeRows(x, 2, 256, q, sx, pairs: true);
        Assert.True(float.IsNaN(sx[8 + 2]), "the NaN chunk's scale is NaN, as the scalar loop gives");
    }
}
