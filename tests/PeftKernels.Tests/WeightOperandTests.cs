using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The frozen-weight operand: its factories validate, and every storage (fp32, bf16, fp16, NF4/FP4) gives the
/// reference result through the one entry point of Gemm, LoraMatmul and DoraNorm, on every SIMD path and thread count.
/// </summary>
public class WeightOperandTests
{
    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>An operand of each storage over the same random weight, and the fp32 values each one stands for.</summary>
    private static (WeightOperand Operand, float[] Values) Make(WeightFormat storage, int rows, int cols, int seed)
    {
        var w = TestUtil.Random(rows * cols, seed);
        switch (storage)
        {
            case WeightFormat.F32:
                return (WeightOperand.F32(w, rows, cols), w);
            case WeightFormat.BF16:
                var bits = w.Select(Bf16Reference.FromSingle).ToArray();
                return (WeightOperand.Bf16(bits, rows, cols), TestUtil.Widen(bits));
            case WeightFormat.F16:
                var half = w.Select(v => (Half)v).ToArray();
                return (WeightOperand.F16(half, rows, cols), half.Select(v => (float)v).ToArray());
            default:
                var q = QuantizedWeight.Quantize(w, [rows, cols], seed % 2 == 0 ? Quant4Type.Nf4 : Quant4Type.Fp4, 64, doubleQuant: seed % 3 == 0);
                return (WeightOperand.Quant4(q), q.Dequantize());
        }
    }

    private static readonly WeightFormat[] Storages = [WeightFormat.F32, WeightFormat.BF16, WeightFormat.F16, WeightFormat.Q4];

    // Awkward sizes: odd, prime, one past a vector width, a single row (the GEMV path) and K past a cache block.
    private static readonly (int N, int In, int Out)[] Shapes = [(1, 37, 29), (3, 65, 17), (7, 129, 33), (17, 300, 9), (2, 257, 70)];

    [Fact]
    public void FactoriesValidateLengthsWithClearMessages()
    {
        var ex = Assert.Throws<ArgumentException>(() => WeightOperand.F32(new float[11], 3, 4));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("w has length 11; expected 12", ex.Message);
        Assert.Contains("[3, 4]", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => WeightOperand.Bf16(new ushort[13], 3, 4));
        Assert.Equal("bits", ex.ParamName);
        Assert.Contains("expected 12", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => WeightOperand.F16(new Half[5], 2, 2));
        Assert.Equal("values", ex.ParamName);
        Assert.Contains("expected 4", ex.Message);
        Assert.Equal("rows", Assert.Throws<ArgumentException>(() => WeightOperand.F32(new float[4], -2, -2)).ParamName);
        Assert.Equal("cols", Assert.Throws<ArgumentException>(() => WeightOperand.Bf16(new ushort[4], 2, -2)).ParamName);
        Assert.Throws<ArgumentNullException>(() => WeightOperand.Quant4(null!));
        var flat = QuantizedWeight.Quantize(new float[64], [64], Quant4Type.Nf4, 64, false);
        ex = Assert.Throws<ArgumentException>(() => WeightOperand.Quant4(flat));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("2-D", ex.Message);
    }

    [Fact]
    public void FactoriesReportStorageAndShape()
    {
        foreach (var storage in Storages)
        {
            var (w, _) = Make(storage, 5, 64, 2);
            Assert.Equal(storage, w.Storage);
            Assert.Equal(5, w.Rows);
            Assert.Equal(64, w.Cols);
            Assert.Equal(320, w.Count);
            Assert.Contains($"{storage}, [5, 64]", w.ToString());
        }
    }

    [Fact]
    public void WrongShapeAndDefaultOperandAreNamedByEveryEntryPoint()
    {
        // w is [4, 3] (12 elements, as the kernel's [3, 4] would be): the shape, not only the length, must match.
        var (n, inF, outF, r) = (2, 4, 3, 2);
        float[] x = new float[n * inF], y = new float[n * outF], a = new float[r * inF], b = new float[outF * r], h = new float[n * r];
        foreach (var storage in Storages)
        {
            var (w, _) = Make(storage, inF, outF, 3);
            var ex = Assert.Throws<ArgumentException>(() => Gemm.Forward(x, w, [], y, n, inF, outF));
            Assert.Equal("w", ex.ParamName);
            Assert.Contains("[3, 4]", ex.Message);
            Assert.Equal("w", Assert.Throws<ArgumentException>(() => Gemm.Backward(y, w, x, n, inF, outF)).ParamName);
            Assert.Equal("w", Assert.Throws<ArgumentException>(() => LoraMatmul.Forward(x, w, [], a, b, 1f, y, h, n, inF, outF, r)).ParamName);
            Assert.Equal("w", Assert.Throws<ArgumentException>(() =>
                LoraMatmul.Backward(y, x, h, w, a, b, 1f, x, a, b, n, inF, outF, r)).ParamName);
            Assert.Equal("w", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(w, a, b, 1f, new float[outF], inF, outF, r)).ParamName);
        }

        WeightOperand none = default;
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => Gemm.Forward(x, none, [], y, n, inF, outF)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => LoraMatmul.Forward(x, none, [], a, b, 1f, y, h, n, inF, outF, r)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(none, a, b, 1f, new float[outF], inF, outF, r)).ParamName);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void GemmForwardAndBackwardMatchReferenceForEveryStorage(SimdPath path, int threads)
    {
        var options = new KernelOptions(threads, path);
        foreach (var storage in Storages)
        {
            foreach (var (n, inF, outF) in Shapes)
            {
                var (w, values) = Make(storage, outF, inF, inF + outF);
                var x = TestUtil.Random(n * inF, n);
                var bias = TestUtil.Random(outF, 5);
                var dy = TestUtil.Random(n * outF, 6);
                string what = $"{storage} n{n} in{inF} out{outF} {path} t{threads}";

                var expected = new float[n * outF];
                GemmReference.Multiply(false, true, n, outF, inF, 1f, x, values, 0f, expected);
                var y = Enumerable.Repeat(float.NaN, n * outF).ToArray();
                Gemm.Forward(x, w, [], y, n, inF, outF, options);
                TestUtil.AssertClose(y, expected, TestUtil.DotAtol(inF) * 2, 1e-5, "y " + what);

                for (int i = 0; i < expected.Length; i++)
                {
                    expected[i] += bias[i % outF];
                }

                Gemm.Forward(x, w, bias, y, n, inF, outF, options);
                TestUtil.AssertClose(y, expected, TestUtil.DotAtol(inF) * 2, 1e-5, "y + bias " + what);

                var dxRef = new float[n * inF];
                GemmReference.Multiply(false, false, n, inF, outF, 1f, dy, values, 0f, dxRef);
                var dx = Enumerable.Repeat(float.NaN, n * inF).ToArray();
                Gemm.Backward(dy, w, dx, n, inF, outF, options);
                TestUtil.AssertClose(dx, dxRef, TestUtil.DotAtol(outF) * 2, 1e-5, "dx " + what);
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void LoraMatmulMatchesReferenceForEveryStorage(SimdPath path, int threads)
    {
        const float scale = 1.5f;
        const ulong seed = 21;
        foreach (var storage in Storages)
        {
            foreach (var (n, inF, outF) in Shapes)
            {
                int r = 1 + (inF % 7);
                float dropout = n % 2 == 1 ? 0.2f : 0f;
                var options = new LoraOptions(dropout, seed, new KernelOptions(threads, path));
                var (w, values) = Make(storage, outF, inF, inF + outF + 1);
                var x = TestUtil.Random(n * inF, 1);
                var bias = TestUtil.Random(outF, 2);
                var a = TestUtil.Random(r * inF, 3);
                var b = TestUtil.Random(outF * r, 4);
                var dy = TestUtil.Random(n * outF, 5);
                string what = $"{storage} n{n} in{inF} out{outF} r{r} p{dropout} {path} t{threads}";

                var y = Enumerable.Repeat(float.NaN, n * outF).ToArray();
                var h = Enumerable.Repeat(float.NaN, n * r).ToArray();
                LoraMatmul.Forward(x, w, bias, a, b, scale, y, h, n, inF, outF, r, options);
                var wd = TestUtil.ToDouble(values);
                var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), wd, TestUtil.ToDouble(bias),
                    TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, seed);
                TestUtil.AssertClose(h, hRef, Atol(inF, hRef), 1e-5, "h " + what);
                TestUtil.AssertClose(y, yRef, Atol(inF + r, yRef) * (1 + scale), 1e-5, "y " + what);

                var dx = Enumerable.Repeat(float.NaN, n * inF).ToArray();
                var da = Enumerable.Repeat(float.NaN, r * inF).ToArray();
                var db = Enumerable.Repeat(float.NaN, outF * r).ToArray();
                LoraMatmul.Backward(dy, x, h, w, a, b, scale, dx, da, db, n, inF, outF, r, options);
                var (dxRef, daRef, dbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(h),
                    wd, TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, seed);
                TestUtil.AssertClose(db, dbRef, Atol(n, dbRef) * scale, 1e-5, "db " + what);
                TestUtil.AssertClose(da, daRef, Atol(n * outF, daRef) * scale, 1e-5, "da " + what);
                TestUtil.AssertClose(dx, dxRef, Atol(outF + r, dxRef) * (1 + (scale * r)), 1e-5, "dx " + what);
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void DoraNormMatchesReferenceForEveryStorage(SimdPath path, int threads)
    {
        const float scale = 0.75f;
        double u = Math.Pow(2, -24);
        foreach (var storage in Storages)
        {
            // 33 000 columns: longer than the scratch buffer, one row per block; 129 rows: a partial last block.
            foreach (var (inF, outF, r) in new[] { (37, 29, 3), (129, 300, 8), (33_000, 3, 2), (1, 17, 1) })
            {
                var (w, values) = Make(storage, outF, inF, inF + outF + 2);
                var a = TestUtil.Random(r * inF, 7);
                var b = TestUtil.Random(outF * r, 8);
                var norms = Enumerable.Repeat(float.NaN, outF).ToArray();
                DoraNorm.RowNorms(w, a, b, scale, norms, inF, outF, r, new KernelOptions(threads, path));
                var expected = DoraNormReference.RowNorms(TestUtil.ToDouble(values), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, inF, outF, r);

                // As DoraNormTests: each entry of W + s·B·A is an fp32 chain of r FMAs, ≤ (r + 2)·2⁻²⁴ of its magnitude sum.
                double atol = 0;
                for (int i = 0; i < outF; i++)
                {
                    double t2 = 0;
                    for (int p = 0; p < inF; p++)
                    {
                        double t = Math.Abs(values[(i * inF) + p]);
                        for (int q = 0; q < r; q++)
                        {
                            t += scale * Math.Abs(b[(i * r) + q] * a[(q * inF) + p]);
                        }

                        t2 += t * t;
                    }

                    atol = Math.Max(atol, (r + 2) * u * Math.Sqrt(t2));
                }

                TestUtil.AssertClose(norms, expected, atol, 2 * u, $"norms {storage} in{inF} out{outF} r{r} {path} t{threads}");
            }
        }
    }

    [Fact]
    public void EntryPointsGiveTheSameBitsAsTheBodiesBelowThem()
    {
        // Behaviour unchanged: the operand entry points run exactly the code the typed overloads ran.
        var (n, inF, outF, r) = (5, 70, 41, 4);
        var x = TestUtil.Random(n * inF, 1);
        var bias = TestUtil.Random(outF, 2);
        var a = TestUtil.Random(r * inF, 3);
        var b = TestUtil.Random(outF * r, 4);
        var w32 = TestUtil.Random(outF * inF, 5);
        var bits = w32.Select(Bf16Reference.FromSingle).ToArray();
        var half = w32.Select(v => (Half)v).ToArray();
        var q = QuantizedWeight.Quantize(w32, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
        var options = new LoraOptions(0.1f, 9);

        var y = new float[n * outF];
        var expected = new float[n * outF];
        Gemm.Forward(x, WeightOperand.Bf16(bits, outF, inF), bias, y, n, inF, outF);
        Gemm.Multiply(false, true, n, outF, inF, 1f, x, (ReadOnlySpan<ushort>)bits, 0f, expected);
        for (int i = 0; i < n; i++)
        {
            TensorPrimitives.Add(expected.AsSpan(i * outF, outF), bias, expected.AsSpan(i * outF, outF));
        }

        Assert.Equal(expected, y);
        Gemm.Forward(x, WeightOperand.F16(half, outF, inF), [], y, n, inF, outF);
        Gemm.Multiply(false, true, n, outF, inF, 1f, x, (ReadOnlySpan<Half>)half, 0f, expected);
        Assert.Equal(expected, y);
        Gemm.Forward(x, WeightOperand.Quant4(q), bias, y, n, inF, outF);
        Quant4Matmul.Forward(x, q, bias, expected, n, inF, outF);
        Assert.Equal(expected, y);

        var h = new float[n * r];
        var hExpected = new float[n * r];
        LoraMatmul.Forward(x, WeightOperand.Quant4(q), bias, a, b, 2f, y, h, n, inF, outF, r, options);
        QLoraMatmul.Forward(x, q, bias, a, b, 2f, expected, hExpected, n, inF, outF, r, options);
        Assert.Equal(expected, y);
        Assert.Equal(hExpected, h);
    }

    /// <summary>As LoraMatmulTests: fp32 reassociation of a K-term sum, relative to max(1, max|ref|).</summary>
    private static double Atol(int k, double[] reference) =>
        4.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1.0, reference.Max(Math.Abs));
}
