// SwiGluKernels against the reference; BadLengthsNameTheView also covers the argument checks of
// the AdamW, IA³ and RMSNorm launchers (one test, kept whole).

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuSwiGluTests(GpuFixture gpu)
{
    /// <summary>σ via the device exp (a few ulp), so a few fp32 ulp of the reference.</summary>
    [Fact]
    public void SwiGluMatchesReference()
    {
        var gate = TestUtil.Random(300, 1, 8f);
        gate[0] = float.PositiveInfinity;
        gate[1] = float.NegativeInfinity;
        gate[2] = -100f;
        var up = TestUtil.Random(300, 2);
        var dy = TestUtil.Random(300, 3);
        using var dgate_ = gpu.Upload(gate);
        using var dup_ = gpu.Upload(up);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(300);
        using var dgate = gpu.Poisoned(300);
        using var dup = gpu.Poisoned(300);
        SwiGluKernels.Forward(gpu.Accelerator, dgate_.View, dup_.View, y.View);
        SwiGluKernels.Backward(gpu.Accelerator, ddy.View, dgate_.View, dup_.View, dgate.View, dup.View);
        var finite = gate.Select(z => float.IsFinite(z) ? z : 0f).ToArray();
        var yRef = SwiGluReference.Forward(TestUtil.ToDouble(finite), TestUtil.ToDouble(up));
        var (dgRef, duRef) = SwiGluReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(finite), TestUtil.ToDouble(up));
        var yGpu = gpu.Download(y.View);
        var dgGpu = gpu.Download(dgate.View);
        var duGpu = gpu.Download(dup.View);

        // silu(+∞)·up = ∞·up, silu(−∞) = 0, silu'(±∞) ∈ {1, 0}: the CPU kernel's limits.
        Assert.Equal(float.PositiveInfinity * up[0], yGpu[0]);
        Assert.Equal(0f, yGpu[1]);
        Assert.Equal(dy[0] * up[0], dgGpu[0]);
        Assert.Equal(0f, dgGpu[1]);
        TestUtil.AssertClose(yGpu.AsSpan(2), yRef.AsSpan(2), 1e-6, 1e-5, "y");
        TestUtil.AssertClose(dgGpu.AsSpan(2), dgRef.AsSpan(2), 1e-6, 1e-5, "dgate");
        TestUtil.AssertClose(duGpu.AsSpan(2), duRef.AsSpan(2), 1e-6, 1e-5, "dup");
    }

    [Fact]
    public void BadLengthsNameTheView()
    {
        using var v4 = gpu.Upload(new float[4]);
        using var v3 = gpu.Upload(new float[3]);
        var e = Assert.Throws<ArgumentException>(() => SwiGluKernels.Forward(gpu.Accelerator, v4.View, v3.View, v4.View));
        Assert.Equal("up", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => AdamWKernels.Step(gpu.Accelerator, v4.View, v4.View, v3.View, v4.View, 1e-3f, 0.9f, 0.999f, 1e-8f, 0f, 1));
        Assert.Equal("m", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => Ia3Kernels.ScaleColumns(gpu.Accelerator, v4.View, v3.View, v4.View, 2, 2));
        Assert.Equal("l", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => RmsNormKernels.Forward(gpu.Accelerator, v4.View, v4.View, 1e-5f, v4.View, v3.View, 1, 4));
        Assert.Equal("rstd", e.ParamName);
        Assert.Contains("rstd has length 3; expected 1 (n)", e.Message);
    }
}
