using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The DoRA reference (norm held constant in backward) and the kernels that compose to it.</summary>
public class DoraTests
{
    private static double[] Rand(Random rng, int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();

    private static double Dot(double[] a, double[] b) => a.Select((v, i) => v * b[i]).Sum();

    /// <summary>
    /// The reference backward equals central finite differences of L = Σ g ⊙ y where the norm is frozen at its value
    /// for the unperturbed parameters (PEFT detaches it), so the FD sees exactly the function that the backward differentiates.
    /// </summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferencesWithTheNormFrozen()
    {
        var (n, inF, outF, r) = (3, 5, 4, 2);
        const double scale = 1.5;
        var rng = new Random(21);
        double[] x = Rand(rng, n * inF), w = Rand(rng, outF * inF), bias = Rand(rng, outF), a = Rand(rng, r * inF), b = Rand(rng, outF * r);
        double[] m = Rand(rng, outF).Select(v => 1 + (0.5 * v)).ToArray(), g = Rand(rng, n * outF);
        double[] frozen = DoraNormReference.RowNorms(w, a, b, scale, inF, outF, r);

        double Loss() => Dot(g, DoraReference.Forward(x, w, bias, a, b, m, frozen, scale, n, inF, outF, r));

        var (dx, da, db, dm) = DoraReference.Backward(g, x, w, a, b, m, frozen, scale, n, inF, outF, r);
        foreach (var (param, grad, name) in new[] { (x, dx, "dx"), (a, da, "da"), (b, db, "db"), (m, dm, "dm") })
        {
            for (int i = 0; i < param.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(param, i, 1e-6, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-8 + (1e-7 * Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }

    /// <summary>With m initialised to ‖W‖ row-wise and B = 0, DoRA equals the base linear (as PEFT's init promises).</summary>
    [Fact]
    public void FreshAdapterEqualsTheBaseLinear()
    {
        var (n, inF, outF, r) = (3, 6, 5, 2);
        var rng = new Random(22);
        double[] x = Rand(rng, n * inF), w = Rand(rng, outF * inF), bias = Rand(rng, outF), a = Rand(rng, r * inF), b = new double[outF * r];
        double[] m = DoraNormReference.RowNorms(w, a, b, 2.0, inF, outF, r);
        var y = DoraReference.Forward(x, w, bias, a, b, m, DoraNormReference.RowNorms(w, a, b, 2.0, inF, outF, r), 2.0, n, inF, outF, r);
        var (baseY, _) = LoraMatmulReference.Forward(x, w, bias, a, b, 0, n, inF, outF, r);
        for (int i = 0; i < y.Length; i++)
        {
            Assert.Equal(baseY[i], y[i], 1e-12);
        }
    }

    /// <summary>x·merged(W)ᵀ + bias equals the DoRA forward: the merge formula (m / norm) ⊙ (W + s·B·A).</summary>
    [Fact]
    public void MergedWeightReproducesTheForward()
    {
        var (n, inF, outF, r) = (4, 7, 5, 3);
        const double scale = 0.5;
        var rng = new Random(23);
        double[] x = Rand(rng, n * inF), w = Rand(rng, outF * inF), bias = Rand(rng, outF), a = Rand(rng, r * inF), b = Rand(rng, outF * r);
        double[] m = Rand(rng, outF).Select(v => 1 + v).ToArray();
        var norms = DoraNormReference.RowNorms(w, a, b, scale, inF, outF, r);
        var y = DoraReference.Forward(x, w, bias, a, b, m, norms, scale, n, inF, outF, r);
        var merged = DoraReference.Merge(w, a, b, m, scale, inF, outF, r);
        var (mergedY, _) = LoraMatmulReference.Forward(x, merged, bias, a, new double[outF * r], 0, n, inF, outF, r);
        for (int i = 0; i < y.Length; i++)
        {
            Assert.Equal(y[i], mergedY[i], 1e-12);
        }
    }

    /// <summary>
    /// The CPU kernels compose to DoRA: norms = DoraNorm.RowNorms, c = m / norms, z = LoraMatmul.Forward (no bias),
    /// y = Ia3.ScaleColumns(z, c); backward: Ia3.ScaleColumnsBackward gives ĝ = g ⊙ c and dc, dm = dc / norms, and
    /// LoraMatmul.Backward(ĝ) gives dx, da, db.
    /// </summary>
    [Fact]
    public void KernelsComposeToTheReference()
    {
        var (n, inF, outF, r) = (9, 40, 24, 4);
        const float scale = 1.25f;
        var x = TestUtil.Random(n * inF, 31);
        var w = TestUtil.Random(outF * inF, 32);
        var a = TestUtil.Random(r * inF, 33);
        var b = TestUtil.Random(outF * r, 34);
        var m = TestUtil.Random(outF, 35).Select(v => 2 + v).ToArray();
        var g = TestUtil.Random(n * outF, 36);

        var norms = new float[outF];
        var wo = WeightOperand.F32(w, outF, inF);
        DoraNorm.RowNorms(wo, a, b, scale, norms, inF, outF, r);
        var c = m.Select((v, o) => v / norms[o]).ToArray();
        var z = new float[n * outF];
        var h = new float[n * r];
        LoraMatmul.Forward(x, wo, [], a, b, scale, z, h, n, inF, outF, r);
        var y = new float[n * outF];
        Ia3.ScaleColumns(z, c, y, n, outF);

        var gHat = new float[n * outF];
        var dc = new float[outF];
        Ia3.ScaleColumnsBackward(g, z, c, gHat, dc, n, outF);
        var dm = dc.Select((v, o) => v / norms[o]).ToArray();
        float[] dx = new float[n * inF], da = new float[r * inF], db = new float[outF * r];
        LoraMatmul.Backward(gHat, x, h, wo, a, b, scale, dx, da, db, n, inF, outF, r);

        double[] xd = TestUtil.ToDouble(x), wd = TestUtil.ToDouble(w), ad = TestUtil.ToDouble(a), bd = TestUtil.ToDouble(b), md = TestUtil.ToDouble(m);
        var normsRef = DoraNormReference.RowNorms(wd, ad, bd, scale, inF, outF, r);
        var yRef = DoraReference.Forward(xd, wd, [], ad, bd, md, normsRef, scale, n, inF, outF, r);
        var (dxRef, daRef, dbRef, dmRef) = DoraReference.Backward(TestUtil.ToDouble(g), xd, wd, ad, bd, md, normsRef, scale, n, inF, outF, r);

        // fp32 pipelines of dot products of length ≤ n·out (da) over values of size ≤ ~|c|·(1 + s·r): 1e-4 relative to
        // the largest entry bounds K·2⁻²⁴ accumulation with margin, and one wrong term (size ~0.1) is far above it.
        void Close(float[] actual, double[] expected, string what) =>
            TestUtil.AssertClose(actual, expected, 1e-4 * Math.Max(1, expected.Max(Math.Abs)), 1e-4, what);
        Close(y, yRef, "y");
        Close(dx, dxRef, "dx");
        Close(da, daRef, "da");
        Close(db, dbRef, "db");
        Close(dm, dmRef, "dm");
    }
}
