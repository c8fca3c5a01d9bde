// Scaling by one scalar on the GPU (Functional.Scale; TensorPrimitives on the CPU): a bottleneck adapter's float or
// "learned" scaling, Average's weights and the fusion regularization's 0.01 (docs/formats/bottleneck-adapters.md).
//   y = s·x            x, y [count], s [1] (a view, so a learned s never leaves the device)
//   dx = s·dy;  ds = Σ dy ⊙ x   (chain rule: y is linear in x and in s)
// ds is one group of 256 threads: thread l sums the elements l, l + 256, … in ascending order, then a fixed tree
// (GpuMath.GroupSum) adds the 256 partials, so the order depends on the length only (deterministic; it differs
// from the CPU's SIMD dot by rounding). A scalar gradient over a bottleneck's [rows, H] output is small work.
namespace PeftKernels.Kernels.Gpu;

/// <summary>One-scalar scaling forward and backward on an ILGPU accelerator.</summary>
public static class ScaleKernels
{
    internal const int Threads = 256;

    /// <summary>y = s[0]·x; <paramref name="y"/> may be <paramref name="x"/>. Enqueues only.</summary>
    public static void Forward(Accelerator accelerator, FloatView x, FloatView s, FloatView y)
    {
        GpuCheck.NotNull(accelerator);
        ScaleShapes.Forward(x.Length, s.Length, y.Length);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (x.Length != 0)
        {
            Loaded.For(accelerator).Scale((int)x.Length, x, s, y);
        }
    }

    /// <summary>dx = s[0]·dy (skipped when <paramref name="dx"/> is empty) and ds[0] = Σ dy ⊙ x (overwritten; skipped when empty). Enqueues only.</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView s, FloatView dx, FloatView ds)
    {
        GpuCheck.NotNull(accelerator);
        ScaleShapes.Backward(dy.Length, x.Length, s.Length, dx.Length, ds.Length);
        GpuCheck.FitsInt(dy.Length, nameof(dy));
        var loaded = Loaded.For(accelerator);
        if (dx.Length != 0 && dy.Length != 0)
        {
            loaded.Scale((int)dy.Length, dy, s, dx);
        }

        if (ds.Length != 0)
        {
            loaded.Dot(new KernelConfig(1, Threads), dy, x, ds, (int)dy.Length);
        }
    }

    internal static void ScaleKernel(Index1D i, FloatView x, FloatView s, FloatView y) => y[i] = s[0] * x[i];

    internal static void DotKernel(FloatView a, FloatView b, FloatView result, int count)
    {
        var scratch = SharedMemory.Allocate<float>(GpuMath.WarpSize);
        float sum = 0f;
        for (int i = Group.IdxX; i < count; i += Group.DimX)
        {
            sum += a[i] * b[i];
        }

        float total = GpuMath.GroupSum(sum, scratch);
        if (Group.IdxX == 0)
        {
            result[0] = total;
        }
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView> Scale;
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, int> Dot;

        private Loaded(Accelerator a)
        {
            Scale = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView>(ScaleKernel);
            Dot = a.LoadStreamKernel<FloatView, FloatView, FloatView, int>(DotKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
