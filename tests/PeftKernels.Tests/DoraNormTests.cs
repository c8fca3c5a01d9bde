using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class DoraNormTests
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public enum WeightKind
    {
        Fp32,
        Bf16,
        Nf4,
        Fp16,
    }

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static void CheckCase(int inF, int outF, int r, WeightKind kind, SimdPath path, int threads, int seed)
    {
        var w32 = TestUtil.Random(outF * inF, seed);
        var a = TestUtil.Random(r * inF, seed + 1);
        var b = TestUtil.Random(outF * r, seed + 2);
        const float scale = 0.75f;
        var options = new KernelOptions(threads, path);
        var norms = Enumerable.Repeat(float.NaN, outF).ToArray();
        switch (kind)
        {
            case WeightKind.Fp32:
                DoraNorm.RowNorms(WeightOperand.F32(w32, outF, inF), a, b, scale, norms, inF, outF, r, options);
                break;
            case WeightKind.Bf16:
                var w16 = w32.Select(Bf16Reference.FromSingle).ToArray();
                w32 = TestUtil.Widen(w16);
                DoraNorm.RowNorms(WeightOperand.Bf16(w16, outF, inF), a, b, scale, norms, inF, outF, r, options);
                break;
            case WeightKind.Fp16:
                var wHalf = w32.Select(v => (Half)v).ToArray();
                w32 = wHalf.Select(v => (float)v).ToArray();
                DoraNorm.RowNorms(WeightOperand.F16(wHalf, outF, inF), a, b, scale, norms, inF, outF, r, options);
                break;
            default:
                var wq = QuantizedWeight.Quantize(w32, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: seed % 2 == 0);
                w32 = wq.Dequantize();
                DoraNorm.RowNorms(WeightOperand.Quant4(wq), a, b, scale, norms, inF, outF, r, options);
                break;
        }

        var expected = DoraNormReference.RowNorms(TestUtil.ToDouble(w32), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, inF, outF, r);

        // Each element of V = W + s·B·A is an fp32 chain of r FMAs plus the rounding of s·B_iq: its error is
        // ≤ (r + 2)·2⁻²⁴·T_ip with T_ip = |W_ip| + |s|·Σ_q|B_iq·A_qp|; the norm moves by at most the norm of
        // those errors (triangle inequality), and the double sum of squares, sqrt and fp32 cast add ≤ 2⁻²³ relative.
        double atol = 0;
        for (int i = 0; i < outF; i++)
        {
            double t2 = 0;
            for (int p = 0; p < inF; p++)
            {
                double t = Math.Abs(w32[(i * inF) + p]);
                for (int q = 0; q < r; q++)
                {
                    t += scale * Math.Abs(b[(i * r) + q] * a[(q * inF) + p]);
                }

                t2 += t * t;
            }

            atol = Math.Max(atol, (r + 2) * U * Math.Sqrt(t2));
        }

        TestUtil.AssertClose(norms, expected, atol, 2 * U, $"norms in {inF} out {outF} r {r} {kind} {path} t{threads}");
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 9, 3, WeightKind.Fp32, path, threads, s);
            CheckCase(37, s, 2, WeightKind.Bf16, path, threads, s + 1);
            CheckCase(s, s, 1, WeightKind.Nf4, path, threads, s + 2);
            CheckCase(s, 13, 4, WeightKind.Fp16, path, threads, s + 3);
        }

        foreach (int r in new[] { 1, 2, 7, 16, 17, 64 })
        {
            CheckCase(70, 33, r, WeightKind.Fp32, path, threads, r);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void BlockingAndParallelEdgesMatchReference(SimdPath path, int threads)
    {
        foreach (var kind in new[] { WeightKind.Fp32, WeightKind.Bf16, WeightKind.Nf4, WeightKind.Fp16 })
        {
            CheckCase(300, 129, 8, kind, path, threads, 1);   // parallel, 16-row blocks with a partial last block
            CheckCase(33_000, 3, 2, kind, path, threads, 2);  // rows longer than the scratch: one row per block
            CheckCase(2049, 40, 4, kind, path, threads, 3);   // 15-row blocks
        }
    }

    [Fact]
    public void NormsAreBitIdenticalForAnyThreadCount()
    {
        var (inF, outF, r) = (300, 200, 8);
        var w = TestUtil.Random(outF * inF, 1);
        var a = TestUtil.Random(r * inF, 2);
        var b = TestUtil.Random(outF * r, 3);
        foreach (var path in TestUtil.Paths)
        {
            float[] Run(int threads)
            {
                var norms = new float[outF];
                DoraNorm.RowNorms(WeightOperand.F32(w, outF, inF), a, b, 2f, norms, inF, outF, r, new KernelOptions(threads, path));
                return norms;
            }

            var one = Run(1);
            Assert.Equal(one, Run(2));
            Assert.Equal(one, Run(3));
        }
    }

    [Fact]
    public void ZeroBGivesTheNormsOfW()
    {
        var (inF, outF, r) = (50, 6, 4);
        var w = TestUtil.Random(outF * inF, 4);
        var norms = new float[outF];
        DoraNorm.RowNorms(WeightOperand.F32(w, outF, inF), TestUtil.Random(r * inF, 5), new float[outF * r], 3f, norms, inF, outF, r);
        for (int i = 0; i < outF; i++)
        {
            double expected = Math.Sqrt(Enumerable.Range(0, inF).Sum(p => (double)w[(i * inF) + p] * w[(i * inF) + p]));
            Assert.Equal(expected, norms[i], expected * 2 * U);
        }
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from inF in Gen.Choose(1, 300)
            from outF in Gen.Choose(1, 100)
            from r in Gen.Choose(1, 32)
            from kind in Gen.Choose(0, 3)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (inF, outF, r, kind, pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t =>
            CheckCase(t.inF, t.outF, t.r, (WeightKind)t.kind, paths[t.pathIndex % paths.Length], t.threads, t.inF + t.outF))
            .Check(TestUtil.Seeded(30, 7));
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] a = new float[8], b = new float[6], norms = new float[3];
        var w = WeightOperand.F32(new float[12], 3, 4);
        var ex = Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(WeightOperand.F32(new float[11], 3, 4), a, b, 1f, norms, 4, 3, 2));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("expected 12", ex.Message);
        Assert.Contains("rows·cols", ex.Message);
        Assert.Equal("a", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(w, new float[9], b, 1f, norms, 4, 3, 2)).ParamName);
        Assert.Equal("b", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(w, a, new float[5], 1f, norms, 4, 3, 2)).ParamName);
        Assert.Equal("norms", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(w, a, b, 1f, new float[4], 4, 3, 2)).ParamName);
        Assert.Equal("rank", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(w, [], [], 1f, norms, 4, 3, 0)).ParamName);
        Assert.Equal("inFeatures", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(WeightOperand.F32(Array.Empty<float>(), 3, 0), [], b, 1f, norms, 0, 3, 2)).ParamName);
        Assert.Equal("bits", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(WeightOperand.Bf16(new ushort[13], 3, 4), a, b, 1f, norms, 4, 3, 2)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(WeightOperand.F16(new Half[12], 4, 3), a, b, 1f, norms, 4, 3, 2)).ParamName);

        var wq = QuantizedWeight.Quantize(new float[12], [4, 3], Quant4Type.Nf4, 64, false);
        ex = Assert.Throws<ArgumentException>(() => DoraNorm.RowNorms(WeightOperand.Quant4(wq), a, b, 1f, norms, 4, 3, 2));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("[3, 4]", ex.Message);
        Assert.Throws<ArgumentNullException>(() => DoraNorm.RowNorms(WeightOperand.Quant4(null!), a, b, 1f, norms, 4, 3, 2));
    }
}
