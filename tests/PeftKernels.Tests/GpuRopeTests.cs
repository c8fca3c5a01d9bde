// RopeKernels against the reference, out of place and in place.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuRopeTests(GpuFixture gpu)
{
    /// <summary>The angle is the same fp32 product as the reference, cos/sin in double: outputs within a few fp32 ulp.</summary>
    [Theory]
    [InlineData(3, 2, 8)]
    [InlineData(5, 3, 34)]
    public void RopeMatchesReferenceAndRunsInPlace(int n, int heads, int headDim)
    {
        var x = TestUtil.Random(n * heads * headDim, 1);
        var positions = Enumerable.Range(0, n).Select(t => (t * 37) + 5).ToArray();
        var invFreq = Rope.InverseFrequencies(headDim, 10000);
        using var dx_ = gpu.Upload(x);
        using var dpos = gpu.Upload(positions);
        using var dinv = gpu.Upload(invFreq);
        using var y = gpu.Poisoned(x.Length);
        RopeKernels.Forward(gpu.Accelerator, dx_.View, dpos.View, dinv.View, y.View, n, heads, headDim);
        TestUtil.AssertClose(gpu.Download(y.View), RopeReference.Forward(TestUtil.ToDouble(x), positions, invFreq, n, heads, headDim), 1e-6, 1e-6, "y");
        RopeKernels.Backward(gpu.Accelerator, y.View, dpos.View, dinv.View, y.View, n, heads, headDim);
        TestUtil.AssertClose(gpu.Download(y.View), x, 1e-6, 1e-6, "Rᵀ·R·x (in place)");
    }
}
