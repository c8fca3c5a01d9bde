// AttentionKernels forward and backward against the reference (grouped-query heads and a decode step included).

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuAttentionTests(GpuFixture gpu)
{
    /// <summary>
    /// Softmax-weighted sums of up to Tk values in [-1, 1] through exp (device exp, a few ulp) and
    /// sums reassociated over key tiles: 1e-5 absolute on o and lse; the gradients sum Tk (dq) or
    /// Tq·H/Hkv (dk, dv) such terms, so their bound scales with that count.
    /// </summary>
    [Theory]
    [InlineData(1, 5, 9, 4, 2, 16)]
    [InlineData(2, 33, 35, 2, 1, 40)]
    [InlineData(1, 1, 1, 1, 1, 1)]
    [InlineData(2, 1, 37, 4, 2, 16)] // a decode step: one query (offset 36) over two key tiles
    public void ForwardAndBackwardMatchReference(int batch, int tq, int tk, int heads, int kvHeads, int headDim)
    {
        double scale = 1.0 / Math.Sqrt(headDim);
        var q = TestUtil.Random(batch * tq * heads * headDim, 1);
        var k = TestUtil.Random(batch * tk * kvHeads * headDim, 2);
        var v = TestUtil.Random(batch * tk * kvHeads * headDim, 3);
        var dO = TestUtil.Random(q.Length, 4);
        using var dq_ = gpu.Upload(q);
        using var dk_ = gpu.Upload(k);
        using var dv_ = gpu.Upload(v);
        using var ddo = gpu.Upload(dO);
        using var o = gpu.Poisoned(q.Length);
        using var lse = gpu.Poisoned(batch * heads * tq);
        AttentionKernels.Forward(gpu.Accelerator, dq_.View, dk_.View, dv_.View, o.View, lse.View, batch, tq, tk, heads, kvHeads, headDim, (float)scale);
        var (oRef, lseRef) = AttentionReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), batch, tq, tk, heads, kvHeads, headDim, scale);
        TestUtil.AssertClose(gpu.Download(o.View), oRef, 1e-5, 1e-5, "o");
        TestUtil.AssertClose(gpu.Download(lse.View), lseRef, 1e-5, 1e-5, "lse");

        using var dq = gpu.Poisoned(q.Length);
        using var dk = gpu.Poisoned(k.Length);
        using var dv = gpu.Poisoned(v.Length);
        AttentionKernels.Backward(gpu.Accelerator, ddo.View, dq_.View, dk_.View, dv_.View, o.View, lse.View, dq.View, dk.View, dv.View,
            batch, tq, tk, heads, kvHeads, headDim, (float)scale);
        var (dqRef, dkRef, dvRef) = AttentionReference.Backward(TestUtil.ToDouble(dO), TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v),
            batch, tq, tk, heads, kvHeads, headDim, scale);
        TestUtil.AssertClose(gpu.Download(dq.View), dqRef, 2e-6 * tk * headDim, 1e-4, "dq");
        double perKey = 2e-6 * tq * (heads / kvHeads) * headDim;
        TestUtil.AssertClose(gpu.Download(dk.View), dkRef, perKey, 1e-4, "dk");
        TestUtil.AssertClose(gpu.Download(dv.View), dvRef, perKey, 1e-4, "dv");
    }

    [Fact]
    public void NoQueriesGiveZeroKeyGradients()
    {
        using var k = gpu.Upload(TestUtil.Random(3 * 4, 1));
        using var empty = gpu.Upload(Array.Empty<float>());
        using var dk = gpu.Poisoned(12);
        using var dv = gpu.Poisoned(12);
        AttentionKernels.Backward(gpu.Accelerator, empty.View, empty.View, k.View, k.View, empty.View, empty.View, empty.View, dk.View, dv.View,
            1, 0, 3, 1, 1, 4, 0.5f);
        Assert.All(gpu.Download(dk.View), x => Assert.Equal(0f, x));
        Assert.All(gpu.Download(dv.View), x => Assert.Equal(0f, x));
    }

    [Fact]
    public void BadArgumentsNameTheirParameter()
    {
        using var big = gpu.Upload(new float[129]);
        using var one = gpu.Upload(new float[1]);
        var e = Assert.Throws<ArgumentException>(() =>
            AttentionKernels.Forward(gpu.Accelerator, big.View, big.View, big.View, big.View, one.View, 1, 1, 1, 1, 1, 129, 1f));
        Assert.Equal("headDim", e.ParamName);
        e = Assert.Throws<ArgumentException>(() =>
            AttentionKernels.Forward(gpu.Accelerator, one.View, one.View, one.View, big.View, one.View, 1, 1, 1, 1, 1, 1, 1f));
        Assert.Equal("o", e.ParamName);
    }
}
