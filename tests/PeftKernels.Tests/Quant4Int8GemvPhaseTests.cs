// Quant4Int8Gemv's two public phases (QuantizeActivations, then Rows over column ranges) against its
// Forward: bit for bit on every SIMD path, for NF4/FP4, nested or not, blocksizes 32..256, odd chunk
// counts, ranges split as threads would take them (others untouched); and no allocation once warm.
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class Quant4Int8GemvPhaseTests
{
    private static readonly (int M, int In, int Out)[] Shapes = [(1, 32, 1), (1, 96, 67), (2, 160, 130), (3, 64, 5), (4, 224, 33), (1, 768, 200)];

    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    [Theory]
    [MemberData(nameof(Paths))]
    public void PhasesEqualForwardBitForBit(SimdPath path)
    {
        int seed = 5;
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            foreach (bool nested in new[] { false, true })
            {
                foreach (int blocksize in new[] { 32, 64, 256 })
                {
                    foreach (var (m, inF, outF) in Shapes)
                    {
                        seed += 3;
                        var x = TestUtil.Random(m * inF, seed, 2f);
                        if (inF >= 64)
                        {
                            Array.Clear(x, 32, 32); // an all-zero chunk: scale 0
                        }

                        var w = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, seed + 1), [outF, inF], type, blocksize, nested);
                        var expected = new float[m * outF];
                        Quant4Int8Gemv.Forward(x, w, [], expected, m, inF, outF, new KernelOptions(1, path));

                        var qx = new sbyte[m * inF];
                        var scales = new float[Quant4Int8Gemv.ScaleLength(m, inF, path)];
                        Quant4Int8Gemv.QuantizeActivations(x, m, inF, qx, scales, path);
                        var y = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                        int third = outF / 3;
                        foreach (var (j0, j1) in new[] { (0, third), (third, 2 * third), (2 * third, outF) })
                        {
                            Quant4Int8Gemv.Rows(qx, scales, w, y, m, inF, outF, j0, j1, path);
                        }

                        for (int i = 0; i < y.Length; i++)
                        {
                            Assert.True(y[i].Equals(expected[i]), $"{type} nested={nested} bs={blocksize} [{m}, {inF}->{outF}] y[{i}] = {y[i]}, Forward gives {expected[i]}");
                        }

                        // A range leaves the other columns alone.
                        var partial = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                        int a = outF > 2 ? 1 : 0, b = outF > 2 ? outF - 1 : outF;
                        Quant4Int8Gemv.Rows(qx, scales, w, partial, m, inF, outF, a, b, path);
                        for (int i = 0; i < partial.Length; i++)
                        {
                            int j = i % outF;
                            Assert.True(j >= a && j < b ? partial[i].Equals(expected[i]) : float.IsNaN(partial[i]), $"range [{a},{b}) element {i}");
                        }
                    }
                }
            }
        }
    }

    [Fact]
    public void PhasesAllocateNothingOnceWarm()
    {
        const int m = 2, inF = 768, outF = 130;
        var x = TestUtil.Random(m * inF, 1);
        var w = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, 2), [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
        var qx = new sbyte[m * inF];
        var scales = new float[Quant4Int8Gemv.ScaleLength(m, inF, SimdPath.Auto)];
        var y = new float[m * outF];
        long bytes = ZeroAllocation.OnThisThread(() =>
        {
            Quant4Int8Gemv.QuantizeActivations(x, m, inF, qx, scales, SimdPath.Auto);
            Quant4Int8Gemv.Rows(qx, scales, w, y, m, inF, outF, 3, outF, SimdPath.Auto);
        });
        Assert.Equal(0, bytes);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var w = QuantizedWeight.Quantize(new float[64 * 3], [3, 64], Quant4Type.Nf4, 64, doubleQuant: false);
        var x = new float[64];
        var qx = new sbyte[64];
        var scales = new float[Quant4Int8Gemv.ScaleLength(1, 64, SimdPath.Scalar)];
        Assert.Equal("inFeatures", Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.QuantizeActivations(new float[48], 1, 48, new sbyte[48], new float[2], SimdPath.Scalar)).ParamName);
        Assert.Equal("qx", Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.QuantizeActivations(x, 1, 64, new sbyte[63], scales, SimdPath.Scalar)).ParamName);
        Assert.Equal("scales", Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.QuantizeActivations(x, 1, 64, qx, new float[1], SimdPath.Scalar)).ParamName);
        Assert.Equal("x", Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.QuantizeActivations(new float[65], 1, 64, qx, scales, SimdPath.Scalar)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.Rows(qx, scales, w, new float[4], 1, 64, 4, 0, 4, SimdPath.Scalar)).ParamName);
        Assert.Equal("j1", Assert.Throws<ArgumentOutOfRangeException>(() => Quant4Int8Gemv.Rows(qx, scales, w, new float[3], 1, 64, 3, 0, 4, SimdPath.Scalar)).ParamName);
    }
}
