// DecodeGemv.Rows against Gemm.Forward (which routes 4-bit weights to Quant4Matmul.Forward) on the
// same SIMD path: the same GEMV code, so every column of the range is equal bit for bit, and columns
// outside the range are never written. Every storage (fp32, bf16, fp16, NF4/FP4 with and without
// nested absmax, blocksizes whose rows are and are not whole blocks, so the 512-bit permuted, wide and
// plain 4-bit dots all run), m = 1..4, odd and empty ranges; and no allocation once warm.
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class DecodeGemvTests
{
    // (in, out): rows not a whole number of 64-blocks (100), whole blocks but not 128-multiples (192), wide (768), one column.
    private static readonly (int In, int Out)[] Shapes = [(100, 37), (192, 45), (768, 130), (64, 1)];

    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    private static IEnumerable<(string Name, WeightOperand W)> Operands(int inF, int outF, int seed)
    {
        var w32 = TestUtil.Random(outF * inF, seed);
        yield return ("f32", WeightOperand.F32(w32, outF, inF));
        yield return ("bf16", WeightOperand.Bf16(TestUtil.RandomBf16(outF * inF, seed + 1), outF, inF));
        yield return ("f16", WeightOperand.F16(w32.Select(v => (Half)v).ToArray(), outF, inF));
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            foreach (bool nested in new[] { false, true })
            {
                foreach (int blocksize in new[] { 64, 32 })
                {
                    var q = QuantizedWeight.Quantize(w32, [outF, inF], type, blocksize, nested);
                    yield return ($"{type} bs{blocksize} nested={nested}", WeightOperand.Quant4(q));
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void RangesEqualGemmForwardBitForBit(SimdPath path)
    {
        int seed = 11;
        foreach (var (inF, outF) in Shapes)
        {
            foreach (var (name, w) in Operands(inF, outF, seed += 5))
            {
                for (int m = 1; m <= DecodeGemv.MaxRows; m++)
                {
                    var x = TestUtil.Random(m * inF, seed + m, 2f);
                    var expected = new float[m * outF];
                    Gemm.Forward(x, w, [], expected, m, inF, outF, new KernelOptions(1, path));

                    // The whole range, an odd start and end, the range split in three pieces as threads would take it, and empty.
                    int third = outF / 3;
                    var ranges = new[] { (0, outF), (outF > 2 ? 1 : 0, outF > 2 ? outF - 1 : outF), (0, third), (third, 2 * third), (2 * third, outF), (outF / 2, outF / 2) };
                    foreach (var (j0, j1) in ranges)
                    {
                        var y = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                        DecodeGemv.Rows(x, w, y, m, inF, outF, j0, j1, path);
                        for (int r = 0; r < m; r++)
                        {
                            for (int j = 0; j < outF; j++)
                            {
                                float got = y[(r * outF) + j];
                                if (j >= j0 && j < j1)
                                {
                                    Assert.True(got.Equals(expected[(r * outF) + j]),
                                        $"{name} [{inF}->{outF}] m={m} range [{j0},{j1}) y[{r},{j}] = {got}, Gemm.Forward gives {expected[(r * outF) + j]}");
                                }
                                else
                                {
                                    Assert.True(float.IsNaN(got), $"{name} m={m} range [{j0},{j1}) wrote column {j} of row {r}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void CloseToDoubleReference(SimdPath path)
    {
        // Independent of Gemm: y = x·Wᵀ in double over the dequantized / widened weight.
        const int inF = 192, outF = 29, m = 3;
        foreach (var (name, w) in Operands(inF, outF, 77))
        {
            var dense = w.Storage switch
            {
                WeightFormat.Q4 => w.Quantized.Dequantize(),
                WeightFormat.BF16 => TestUtil.Widen(TestUtil.RandomBf16(outF * inF, 78)),
                WeightFormat.F16 => TestUtil.Random(outF * inF, 77).Select(v => (float)(Half)v).ToArray(),
                _ => TestUtil.Random(outF * inF, 77),
            };
            var x = TestUtil.Random(m * inF, 79);
            var y = new float[m * outF];
            DecodeGemv.Rows(x, w, y, m, inF, outF, 0, outF, path);
            var expected = new double[m * outF];
            for (int r = 0; r < m; r++)
            {
                for (int j = 0; j < outF; j++)
                {
                    double s = 0;
                    for (int p = 0; p < inF; p++)
                    {
                        s += (double)x[(r * inF) + p] * dense[(j * inF) + p];
                    }

                    expected[(r * outF) + j] = s;
                }
            }

            TestUtil.AssertClose(y, expected, 1e-4, 1e-4, name);
        }
    }

    [Fact]
    public void NoAllocationOnceWarm()
    {
        const int inF = 768, outF = 130;
        foreach (var (name, w) in Operands(inF, outF, 3))
        {
            foreach (int m in new[] { 1, 3 })
            {
                var x = TestUtil.Random(m * inF, 4);
                var y = new float[m * outF];
                long bytes = ZeroAllocation.OnThisThread(() => DecodeGemv.Rows(x, w, y, m, inF, outF, 5, outF - 3, SimdPath.Auto));
                Assert.True(bytes == 0, $"{name} m={m}: {bytes} bytes over 100 calls");
            }
        }
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var w = WeightOperand.F32(new float[12], 3, 4);
        var x = new float[4];
        var y = new float[3];
        Assert.Equal("m", Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGemv.Rows(x, w, y, 0, 4, 3, 0, 3, SimdPath.Auto)).ParamName);
        Assert.Equal("m", Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGemv.Rows(new float[20], w, new float[15], 5, 4, 3, 0, 3, SimdPath.Auto)).ParamName);
        Assert.Equal("j1", Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGemv.Rows(x, w, y, 1, 4, 3, 0, 4, SimdPath.Auto)).ParamName);
        Assert.Equal("j1", Assert.Throws<ArgumentOutOfRangeException>(() => DecodeGemv.Rows(x, w, y, 1, 4, 3, 2, 1, SimdPath.Auto)).ParamName);
        Assert.Equal("x", Assert.Throws<ArgumentException>(() => DecodeGemv.Rows(new float[5], w, y, 1, 4, 3, 0, 3, SimdPath.Auto)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => DecodeGemv.Rows(x, w, y, 1, 3, 4, 0, 3, SimdPath.Auto)).ParamName);
    }
}
