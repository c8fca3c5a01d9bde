// BatchGemv (the engine's batched decode product, x and W read in place) against a double-precision
// reference over the dequantized weight, on every SIMD path and every storage (fp32, bf16, fp16,
// NF4/FP4 with and without nested absmax): row counts that leave partial quads (1..9, 17), inner sizes
// that leave a scalar tail on every vector width (1, 15, 17, 100) and whole blocks (64, 192), output
// counts that leave partial strips; column ranges never write outside themselves; Forward gives the
// same bits at 1, 2 and 3 threads (each column is one thread's, in the same order); bad arguments named.
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class BatchGemvTests
{
    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    private static IEnumerable<(string Name, WeightOperand W, float[] Dense)> Operands(int inF, int outF, int seed)
    {
        var w32 = TestUtil.Random(outF * inF, seed);
        yield return ("f32", WeightOperand.F32(w32, outF, inF), w32);
        var bf16 = TestUtil.RandomBf16(outF * inF, seed + 1);
        yield return ("bf16", WeightOperand.Bf16(bf16, outF, inF), TestUtil.Widen(bf16));
        var f16 = w32.Select(v => (Half)v).ToArray();
        yield return ("f16", WeightOperand.F16(f16, outF, inF), f16.Select(v => (float)v).ToArray());
        if (inF * outF % 64 == 0)
        {
            foreach (var (type, nested) in new[] { (Quant4Type.Nf4, false), (Quant4Type.Nf4, true), (Quant4Type.Fp4, false) })
            {
                var q = QuantizedWeight.Quantize(w32, [outF, inF], type, 64, nested);
                yield return ($"{type} nested={nested}", WeightOperand.Quant4(q), q.Dequantize());
            }
        }
    }

    private static double[] Reference(float[] x, float[] w, int m, int inF, int outF)
    {
        var y = new double[m * outF];
        for (int r = 0; r < m; r++)
        {
            for (int j = 0; j < outF; j++)
            {
                double s = 0;
                for (int p = 0; p < inF; p++)
                {
                    s += (double)x[(r * inF) + p] * w[(j * inF) + p];
                }

                y[(r * outF) + j] = s;
            }
        }

        return y;
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void MatchesTheReferenceOnAwkwardSizes(SimdPath path)
    {
        int seed = 3;
        foreach (var (inF, outF) in new[] { (1, 5), (15, 7), (17, 9), (64, 13), (100, 6), (192, 11) })
        {
            foreach (var (name, w, dense) in Operands(inF, outF, seed += 7))
            {
                foreach (int m in new[] { 1, 2, 3, 4, 5, 8, 9, 17 })
                {
                    var x = TestUtil.Random(m * inF, seed + m, 2f);
                    var expected = Reference(x, dense, m, inF, outF);
                    var y = new float[m * outF];
                    BatchGemv.Rows(x, w, y, m, inF, outF, 0, outF, path);
                    for (int i = 0; i < y.Length; i++)
                    {
                        double bound = 1e-5 * (1 + Math.Sqrt(inF)) * (1 + Math.Abs(expected[i]));
                        Assert.True(Math.Abs(y[i] - expected[i]) <= bound,
                            $"{name} m={m} [{inF}->{outF}] y[{i / outF},{i % outF}] = {y[i]}, reference {expected[i]}");
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void ColumnRangesWriteOnlyThemselvesAndThreadsGiveTheSameBits(SimdPath path)
    {
        const int inF = 192, outF = 23, m = 7;
        foreach (var (name, w, _) in Operands(inF, outF, 41))
        {
            var x = TestUtil.Random(m * inF, 5, 2f);
            var whole = new float[m * outF];
            BatchGemv.Rows(x, w, whole, m, inF, outF, 0, outF, path);
            foreach (var (j0, j1) in new[] { (1, 22), (0, 4), (5, 9), (9, 9) })
            {
                var y = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                BatchGemv.Rows(x, w, y, m, inF, outF, j0, j1, path);
                for (int i = 0; i < y.Length; i++)
                {
                    int j = i % outF;
                    if (j >= j0 && j < j1)
                    {
                        Assert.True(y[i].Equals(whole[i]), $"{name} range [{j0},{j1}) column {j}: {y[i]} vs the whole call's {whole[i]}");
                    }
                    else
                    {
                        Assert.True(float.IsNaN(y[i]), $"{name} range [{j0},{j1}) wrote column {j}");
                    }
                }
            }

            foreach (int threads in new[] { 1, 2, 3 })
            {
                var y = new float[m * outF];
                BatchGemv.Forward(x, w, y, m, inF, outF, new KernelOptions(threads, path));
                Assert.True(y.SequenceEqual(whole), $"{name}: {threads} threads differ from one call on the calling thread");
            }
        }
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var w = WeightOperand.F32(new float[6], 3, 2);
        var ex = Assert.Throws<ArgumentException>(() => BatchGemv.Rows(new float[3], w, new float[6], 2, 2, 3, 0, 3, SimdPath.Auto));
        Assert.Contains("x", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => BatchGemv.Rows(new float[4], w, new float[5], 2, 2, 3, 0, 3, SimdPath.Auto));
        Assert.Contains("y", ex.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => BatchGemv.Rows(new float[4], w, new float[6], 2, 2, 3, 2, 4, SimdPath.Auto));
        Assert.ThrowsAny<ArgumentException>(() => BatchGemv.Rows(new float[6], w, new float[6], 2, 3, 2, 0, 2, SimdPath.Auto));
        Assert.ThrowsAny<ArgumentException>(() => BatchGemv.Forward(new float[4], w, new float[6], 0, 2, 3, new KernelOptions(1)));
    }
}
