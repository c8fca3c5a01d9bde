using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;
using Xunit.Abstractions;

namespace PeftKernels.Tests;

public class Quant4Int8GemvTests(ITestOutputHelper output)
{
    // (n, in, out): in a multiple of 32 but not of 64 (weight blocks of 64+ then start mid-row),
    // odd chunk counts (the SIMD tails), out not a multiple of the thread split.
    private static readonly (int N, int In, int Out)[] Shapes =
        [(1, 32, 1), (1, 96, 67), (2, 160, 130), (3, 64, 5), (4, 224, 33), (1, 768, 200), (4, 800, 71)];

    private static readonly int[] Blocksizes = [32, 64, 128, 256];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static float[] Weights(int count, int seed)
    {
        // Rows of different magnitudes, so the blocks' absmax differ.
        var w = TestUtil.Random(count, seed);
        for (int i = 0; i < w.Length; i++)
        {
            w[i] *= 1f + (i / 97 % 5);
        }

        return w;
    }

    private static float[] Run(float[] x, QuantizedWeight w, float[] bias, int n, int inF, int outF, KernelOptions options)
    {
        var y = Enumerable.Repeat(float.NaN, n * outF).ToArray();
        Quant4Int8Gemv.Forward(x, w, bias, y, n, inF, outF, options);
        return y;
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void BitExactAgainstIntegerReference(SimdPath path, int threads)
    {
        int seed = 0;
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            foreach (bool doubleQuant in new[] { false, true })
            {
                foreach (int blocksize in Blocksizes)
                {
                    foreach (var (n, inF, outF) in Shapes)
                    {
                        seed += 3;
                        var x = TestUtil.Random(n * inF, seed, 2f);
                        if (inF >= 64)
                        {
                            Array.Clear(x, 32, 32); // an all-zero chunk: scale 0
                        }

                        var w = QuantizedWeight.Quantize(Weights(outF * inF, seed + 1), [outF, inF], type, blocksize, doubleQuant);
                        var bias = seed % 2 == 0 ? TestUtil.Random(outF, seed + 2) : [];
                        var expected = Quant4Int8GemvReference.Forward(x, w.Packed, w.AbsmaxFp32(), Quant4Codes.Table(type), blocksize, n, inF, outF);
                        for (int i = 0; bias.Length > 0 && i < expected.Length; i++)
                        {
                            expected[i] += bias[i % outF];
                        }

                        var y = Run(x, w, bias, n, inF, outF, new KernelOptions(threads, path));
                        for (int i = 0; i < y.Length; i++)
                        {
                            Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                                $"{type} dq {doubleQuant} bs {blocksize} n {n} in {inF} out {outF} {path} t{threads}: y[{i}] = {y[i]:R}, reference {expected[i]:R}");
                        }
                    }
                }
            }
        }
    }

    [Fact]
    public void EveryPathAndThreadCountGivesTheSameBits()
    {
        const int n = 1, inF = 768, outF = 300;
        var x = TestUtil.Random(n * inF, 5, 3f);
        var w = QuantizedWeight.Quantize(Weights(outF * inF, 6), [outF, inF]);
        var first = Run(x, w, [], n, inF, outF, new KernelOptions(1, SimdPath.Scalar));
        foreach (var path in TestUtil.Paths)
        {
            foreach (int threads in new[] { 1, 2, 3 })
            {
                Assert.Equal(first, Run(x, w, [], n, inF, outF, new KernelOptions(threads, path)));
            }
        }
    }

    // The bound of the reference's header, per output: Σ_i |x_i|·a_i/254 (table rounding) +
    // sx_i·|w_i|/2 (activation rounding) + sx_i·a_i/508 (both), a_i the absmax of w_i's block and
    // sx_i its chunk's activation scale; plus the fp32 accumulation of both paths.
    [Theory]
    [InlineData(Quant4Type.Nf4, false)]
    [InlineData(Quant4Type.Nf4, true)]
    [InlineData(Quant4Type.Fp4, false)]
    [InlineData(Quant4Type.Fp4, true)]
    public void ErrorAgainstExactPathIsWithinTheStatedBound(Quant4Type type, bool doubleQuant)
    {
        const int n = 2, inF = 768, outF = 256, blocksize = 64;
        var x = TestUtil.Random(n * inF, 11, 2f);
        var w = QuantizedWeight.Quantize(Weights(outF * inF, 12), [outF, inF], type, blocksize, doubleQuant);
        var wd = w.Dequantize();
        var absmax = w.AbsmaxFp32();
        var exact = new float[n * outF];
        Quant4Matmul.Forward(x, w, [], exact, n, inF, outF);
        var y = Run(x, w, [], n, inF, outF, default);

        double worstRatio = 0, worstError = 0, maxExact = 0;
        for (int r = 0; r < n; r++)
        {
            for (int j = 0; j < outF; j++)
            {
                double bound = 0, magnitude = 0;
                for (int c = 0; c < inF / 32; c++)
                {
                    double sx = x.Skip((r * inF) + (c * 32)).Take(32).Max(Math.Abs) / 127.0;
                    for (int i = c * 32; i < (c + 1) * 32; i++)
                    {
                        double xi = x[(r * inF) + i], wi = wd[(j * inF) + i], a = absmax[((j * inF) + i) / blocksize];
                        bound += (Math.Abs(xi) * a / 254) + (sx * Math.Abs(wi) / 2) + (sx * a / 508);
                        magnitude += Math.Abs(xi * wi) + (sx * a);
                    }
                }

                bound = (bound * 1.001) + (2 * TestUtil.DotAtol(inF) * magnitude);
                double error = Math.Abs(y[(r * outF) + j] - exact[(r * outF) + j]);
                Assert.True(error <= bound, $"{type} dq {doubleQuant} r {r} j {j}: |int8 − exact| = {error}, bound {bound}");
                worstRatio = Math.Max(worstRatio, error / bound);
                worstError = Math.Max(worstError, error);
                maxExact = Math.Max(maxExact, Math.Abs(exact[(r * outF) + j]));
            }
        }

        output.WriteLine($"{type} dq {doubleQuant}: max |int8 − exact| {worstError:G4} ({worstError / maxExact:P3} of max |y|), at most {worstRatio:P1} of the bound");

        // The bound is a worst case (every rounding the same sign); random data must land well
        // inside it, and the error must be small next to the outputs.
        Assert.True(worstRatio < 0.5, $"worst error/bound {worstRatio}");
        Assert.True(worstError < 0.05 * maxExact, $"worst error {worstError} vs max |y| {maxExact}");
    }

    [Fact]
    public void ZeroActivationsGiveTheBias()
    {
        var w = QuantizedWeight.Quantize(Weights(64 * 10, 1), [10, 64]);
        var bias = TestUtil.Random(10, 2);
        Assert.Equal(bias, Run(new float[64], w, bias, 1, 64, 10, default));
    }

    [Fact]
    public void RejectsBadArguments()
    {
        var w = QuantizedWeight.Quantize(Weights(48 * 4, 1), [4, 48]);
        var e = Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.Forward(new float[48], w, [], new float[4], 1, 48, 4));
        Assert.Contains("multiple of 32", e.Message);
        var w64 = QuantizedWeight.Quantize(Weights(64 * 4, 1), [4, 64]);
        e = Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.Forward(new float[64], w64, [], new float[4], 1, 64, 5));
        Assert.Contains("[5, 64]", e.Message);
        e = Assert.Throws<ArgumentException>(() => Quant4Int8Gemv.Forward(new float[63], w64, [], new float[4], 1, 64, 4));
        Assert.Contains("x", e.Message);
    }
}
