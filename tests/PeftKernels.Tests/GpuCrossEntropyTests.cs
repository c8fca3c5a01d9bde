// CrossEntropyKernels forward and backward against the reference; labels are checked on the host.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuCrossEntropyTests(GpuFixture gpu)
{
    /// <summary>
    /// lse through the device exp/log and a reassociated sum of vocab terms: a few fp32 ulp of
    /// lse (≤ ~10 here), so 1e-5 relative; the loss adds n such terms in double.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(5, 300)]
    [InlineData(9, 1000)]
    public void ForwardAndBackwardMatchReference(int n, int vocab)
    {
        var logits = TestUtil.Random(n * vocab, 1, 6f);
        var labels = Enumerable.Range(0, n).Select(i => i % 3 == 1 ? CrossEntropy.IgnoreIndex : (i * 7919) % vocab).ToArray();
        using var dz = gpu.Upload(logits);
        using var dl = gpu.Upload(labels);
        using var lse = gpu.Poisoned(n);
        double loss = CrossEntropyKernels.Forward(gpu.Accelerator, dz.View, dl.View, lse.View, n, vocab);
        var (lossRef, lseRef) = CrossEntropyReference.Forward(TestUtil.ToDouble(logits), labels, n, vocab);
        var lseGpu = gpu.Download(lse.View);
        TestUtil.AssertClose(lseGpu, lseRef, 1e-5, 1e-6, "lse");
        Assert.True(Math.Abs(loss - lossRef) <= 1e-5 * n, $"loss {loss} vs reference {lossRef}");

        // The loss is summed on the host exactly as the CPU kernel sums it, from the same lse.
        var lseCpu = new float[n];
        CrossEntropy.Forward(logits, labels, lseCpu, n, vocab);
        Assert.Equal(lseCpu.Zip(labels).Select((p, i) => p.Second == -100 ? 0 : (double)lseGpu[i] - logits[(i * vocab) + p.Second]).Sum(), loss, 12);

        const float gradScale = 0.25f;
        CrossEntropyKernels.BackwardInPlace(gpu.Accelerator, dz.View, dl.View, lse.View, gradScale, n, vocab);
        var gradRef = CrossEntropyReference.Backward(TestUtil.ToDouble(logits), labels, gradScale, n, vocab);

        // softmax values ≤ 1 through exp (a few ulp) times gradScale.
        TestUtil.AssertClose(gpu.Download(dz.View), gradRef, 1e-7, 1e-5, "dlogits");
    }

    [Fact]
    public void OutOfRangeLabelIsRejectedOnTheHost()
    {
        // The launchers never download the labels (GpuLaunch's rule): the caller checks them before upload.
        var e = Assert.Throws<ArgumentException>(() => CrossEntropyKernels.CheckLabels(new[] { 1, 3 }, 3));
        Assert.Equal("labels", e.ParamName);
        Assert.Contains("labels[1] is 3", e.Message);
        CrossEntropyKernels.CheckLabels(new[] { 2, CrossEntropyKernels.IgnoreIndex, 0 }, 3);
    }
}
