using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class QLoraMatmulTests
{
    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>Same bound as the fp32 kernels: the dequantized weight is exact in fp32, only the sum order differs.</summary>
    private static double Atol(int k, double[] reference) =>
        4.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1.0, reference.Max(Math.Abs));

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void FusedDequantGemmMatchesReference(SimdPath path, int threads)
    {
        foreach (var (n, inF, outF, bs, type, dq) in new[]
        {
            (1, 70, 33, 64, Quant4Type.Nf4, true), (1, 128, 20, 64, Quant4Type.Nf4, true), (1, 96, 40, 64, Quant4Type.Fp4, false),
            (1, 80, 24, 32, Quant4Type.Nf4, false), (1, 64, 16, 32, Quant4Type.Fp4, true), (2, 256, 9, 128, Quant4Type.Nf4, false), (1, 4096, 3, 4096, Quant4Type.Nf4, true), (1, 192, 21, 64, Quant4Type.Nf4, false), (1, 384, 70, 128, Quant4Type.Nf4, true), (1, 512, 65, 256, Quant4Type.Fp4, true), (1, 256, 130, 64, Quant4Type.Nf4, true), (3, 257, 40, 32, Quant4Type.Fp4, false), (4, 64, 64, 128, Quant4Type.Nf4, false),
            (5, 129, 31, 64, Quant4Type.Nf4, true), (17, 300, 65, 256, Quant4Type.Fp4, true), (64, 33, 129, 64, Quant4Type.Nf4, false),
            (1, 384, 33, 64, Quant4Type.Fp4, false), (1, 640, 17, 64, Quant4Type.Nf4, true), (1, 1024, 7, 512, Quant4Type.Nf4, false),
        })
        {
            var x = TestUtil.Random(n * inF, n);
            var wq = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, inF), [outF, inF], type, bs, dq);
            var w = wq.Dequantize();
            foreach (bool withBias in new[] { false, true })
            {
                var bias = withBias ? TestUtil.Random(outF, 3) : [];
                var expected = new float[n * outF];
                GemmReference.Multiply(false, true, n, outF, inF, 1f, x, w, 0f, expected);
                if (withBias)
                {
                    for (int i = 0; i < expected.Length; i++)
                    {
                        expected[i] += bias[i % outF];
                    }
                }

                var y = Enumerable.Repeat(float.NaN, n * outF).ToArray();
                Quant4Matmul.Forward(x, wq, bias, y, n, inF, outF, new KernelOptions(threads, path));
                TestUtil.AssertClose(y, expected, TestUtil.DotAtol(inF) * 2, 1e-5, $"nf4 gemm n={n} in={inF} out={outF} bs={bs} {type} dq={dq} {path} t{threads}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void InputGradientThroughFrozen4BitWeightMatchesReference(SimdPath path, int threads)
    {
        foreach (var (n, inF, outF, bs, type, dq) in new[]
        {
            (1, 70, 33, 64, Quant4Type.Nf4, true), (2, 64, 16, 32, Quant4Type.Fp4, false), (3, 257, 40, 32, Quant4Type.Nf4, false),
            (5, 129, 31, 64, Quant4Type.Nf4, true), (17, 300, 65, 256, Quant4Type.Fp4, true), (64, 33, 129, 64, Quant4Type.Nf4, false),
            (1, 384, 33, 64, Quant4Type.Fp4, false), (1, 640, 17, 64, Quant4Type.Nf4, true), (1, 1024, 7, 512, Quant4Type.Nf4, false),
        })
        {
            var dy = TestUtil.Random(n * outF, n + 7);
            var wq = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, inF), [outF, inF], type, bs, dq);
            var expected = new float[n * inF];
            GemmReference.Multiply(false, false, n, inF, outF, 1f, dy, wq.Dequantize(), 0f, expected);
            var dx = Enumerable.Repeat(float.NaN, n * inF).ToArray();
            Quant4Matmul.Backward(dy, wq, dx, n, inF, outF, new KernelOptions(threads, path));

            // K = outFeatures here: the same reassociation bound as the forward.
            TestUtil.AssertClose(dx, expected, TestUtil.DotAtol(outF) * 2, 1e-5, $"nf4 dx n={n} in={inF} out={outF} bs={bs} {type} dq={dq} {path} t{threads}");
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ForwardAndBackwardMatchLoraReferenceOnTheDequantizedWeight(SimdPath path, int threads)
    {
        foreach (var (n, inF, outF, r, dropout) in new[] { (1, 70, 66, 4, 0f), (2, 64, 33, 8, 0.2f), (4, 129, 70, 3, 0f), (13, 100, 47, 16, 0.1f), (40, 65, 129, 5, 0f) })
        {
            var x = TestUtil.Random(n * inF, 1);
            var wq = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, 2), [outF, inF], Quant4Type.Nf4, 64, true);
            var w = TestUtil.ToDouble(wq.Dequantize());
            var bias = TestUtil.Random(outF, 3);
            var a = TestUtil.Random(r * inF, 4);
            var b = TestUtil.Random(outF * r, 5);
            var dy = TestUtil.Random(n * outF, 6);
            const float scale = 0.5f;
            var options = new LoraOptions(dropout, 77, new KernelOptions(threads, path));
            var y = new float[n * outF];
            var h = new float[n * r];
            QLoraMatmul.Forward(x, wq, bias, a, b, scale, y, h, n, inF, outF, r, options);
            var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), w, TestUtil.ToDouble(bias), TestUtil.ToDouble(a), TestUtil.ToDouble(b),
                scale, n, inF, outF, r, dropout, 77);
            string what = $"qlora n={n} in={inF} out={outF} r={r} p={dropout} {path} t{threads}";
            TestUtil.AssertClose(h, hRef, Atol(inF, hRef), 1e-5, "h " + what);
            TestUtil.AssertClose(y, yRef, Atol(inF + r, yRef) * 2, 1e-5, "y " + what);

            var dx = new float[n * inF];
            var da = new float[r * inF];
            var db = new float[outF * r];
            QLoraMatmul.Backward(dy, x, h, wq, a, b, scale, dx, da, db, n, inF, outF, r, options);
            var (dxRef, daRef, dbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(h), w,
                TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, 77);
            TestUtil.AssertClose(dx, dxRef, Atol(outF + r, dxRef) * 2, 1e-5, "dx " + what);
            TestUtil.AssertClose(da, daRef, Atol(n * outF, daRef), 1e-5, "da " + what);
            TestUtil.AssertClose(db, dbRef, Atol(n, dbRef), 1e-5, "db " + what);
        }
    }

    /// <summary>
    /// The fp32 kernel's gradients against central differences of L = Σ g ⊙ y. y is linear in
    /// x, a and b separately, so the difference quotient is exact up to fp32 rounding of L
    /// (≈ 2⁻²⁴·Σ|g ⊙ y| / eps): eps = 0.25 and a 2e-3 relative tolerance leave ample margin.
    /// </summary>
    [Fact]
    public void BackwardMatchesFiniteDifferencesOfTheKernelForward()
    {
        var (n, inF, outF, r) = (3, 40, 24, 4);
        var x = TestUtil.Random(n * inF, 11);
        var wq = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, 12), [outF, inF], Quant4Type.Nf4, 32, true);
        var a = TestUtil.Random(r * inF, 13);
        var b = TestUtil.Random(outF * r, 14);
        var g = TestUtil.Random(n * outF, 15);
        const float scale = 2f;
        double Loss()
        {
            var y = new float[n * outF];
            QLoraMatmul.Forward(x, wq, [], a, b, scale, y, new float[n * r], n, inF, outF, r);
            return y.Select((v, i) => (double)v * g[i]).Sum();
        }

        var h = new float[n * r];
        QLoraMatmul.Forward(x, wq, [], a, b, scale, new float[n * outF], h, n, inF, outF, r);
        var dx = new float[n * inF];
        var da = new float[r * inF];
        var db = new float[outF * r];
        QLoraMatmul.Backward(g, x, h, wq, a, b, scale, dx, da, db, n, inF, outF, r);
        foreach (var (param, grad, name) in new[] { (x, dx, "dx"), (a, da, "da"), (b, db, "db") })
        {
            for (int i = 0; i < param.Length; i += 3)
            {
                double numeric = TestUtil.CentralDifference(param, i, 0.25f, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 2e-3 * Math.Max(1, Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }

    [Fact]
    public void WrongWeightShapeIsNamed()
    {
        var wq = QuantizedWeight.Quantize(new float[64], [8, 8], Quant4Type.Nf4, 64, false);
        var ex = Assert.Throws<ArgumentException>(() => Quant4Matmul.Forward(new float[4], wq, [], new float[16], 1, 4, 16));
        Assert.Contains("[8, 8]", ex.Message);
        Assert.Contains("[16, 4]", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => QLoraMatmul.Forward(new float[8], wq, [], new float[16], new float[16], 1f, new float[8], new float[2], 1, 8, 8, 0));
        Assert.Equal("rank", ex.ParamName);
    }

    [Fact]
    public unsafe void WideDotPermutationPlacesEveryElementOnceAndCopiesTheTail()
    {
        // 2 whole 128-chunks plus a 44-element tail: the gather path (AVX-512) and the scalar mapping must agree.
        const int count = 300;
        var x = Enumerable.Range(0, count).Select(i => (float)i).ToArray();
        var xq = new float[count];
        fixed (float* px = x, pq = xq)
        {
            Quant4Simd.PermuteForWideDot(px, count, pq);
        }

        for (int q = 0; q < 256; q++)
        {
            Assert.Equal((q / 128 * 128) + Quant4Simd.WideElement(q % 128), (int)xq[q]);
        }

        Assert.Equal(x[256..], xq[256..]);
        Assert.Equal(Enumerable.Range(0, 128), Enumerable.Range(0, 128).Select(Quant4Simd.WideElement).Order());
    }

    /// <summary>The GEMV permutes its own copy of x in place: the same result as into a second buffer, for both decodes' orders.</summary>
    [Fact]
    public unsafe void InPlacePermutationsMatchTheCopyingOnes()
    {
        const int count = 300; // 2 whole 128-chunks (18 groups of 16) and a tail
        var x = Enumerable.Range(0, count).Select(i => (float)i).ToArray();
        var wide = new float[count];
        var narrow = new float[count];
        var wideInPlace = (float[])x.Clone();
        var narrowInPlace = (float[])x.Clone();
        fixed (float* px = x, pw = wide, pn = narrow, pwi = wideInPlace, pni = narrowInPlace)
        {
            Quant4Simd.PermuteForWideDot(px, count, pw);
            Quant4Simd.PermuteForDot(px, count, pn);
            Quant4Simd.PermuteForWideDotInPlace(pwi, count);
            Quant4Simd.PermuteForDotInPlace(pni, count);
        }

        Assert.Equal(wide, wideInPlace);
        Assert.Equal(narrow, narrowInPlace);
        Assert.NotEqual(x, wideInPlace);
        Assert.NotEqual(x, narrowInPlace);
    }

    /// <summary>
    /// The two-row wide decode (the NF4 GEMV's path for pairs of output rows, block size 64)
    /// returns for each row exactly what the one-row decode does, so how rows are paired never
    /// changes a result. 1, 2, 3 and 5 chunks per row cover the offset-load loop and the
    /// shift-only last chunk; rows are taken at every pair of a 5-row weight.
    /// </summary>
    [Fact]
    public unsafe void WidePairDecodeEqualsTwoOneRowDecodesBitForBit()
    {
        if (!KernelOptions.IsSupported(SimdPath.Vector512))
        {
            return; // the wide decode is the Vector512 path only
        }

        float* pair = stackalloc float[2];
        foreach (var (k, type) in new[] { (128, Quant4Type.Nf4), (256, Quant4Type.Fp4), (384, Quant4Type.Nf4), (640, Quant4Type.Nf4) })
        {
            const int rows = 5;
            var wq = QuantizedWeight.Quantize(TestUtil.Random(rows * k, k), [rows, k], type, 64, true);
            var xq = new float[k];
            var table = Quant4Codes.Search(type).Values;
            fixed (float* px = TestUtil.Random(k, 3), pq = xq)
            fixed (byte* packed = wq.Packed)
            fixed (float* absmax = wq.AbsmaxFp32())
            {
                Quant4Simd.PermuteForWideDot(px, k, pq);
                for (int j = 0; j + 1 < rows; j++)
                {
                    pair[0] = 0.5f;
                    pair[1] = -0.25f;
                    Quant4Simd.DotRunWidePair(packed, absmax, table, (long)j * k, k, pq, pair);
                    float single0 = 0.5f + Quant4Simd.DotRunWide(packed, absmax, table, 64, (long)j * k, k, pq);
                    float single1 = -0.25f + Quant4Simd.DotRunWide(packed, absmax, table, 64, (long)(j + 1) * k, k, pq);
                    Assert.Equal(BitConverter.SingleToInt32Bits(single0), BitConverter.SingleToInt32Bits(pair[0]));
                    Assert.Equal(BitConverter.SingleToInt32Bits(single1), BitConverter.SingleToInt32Bits(pair[1]));
                    Assert.NotEqual(0.5f, pair[0]);
                }
            }
        }
    }
}
