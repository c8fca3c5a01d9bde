// RMSNorm (HF LlamaRMSNorm, fp32) on the GPU (RmsNorm.cs). Shapes, row-major: x, y, dy, dx [n, dim];
// weight, dweight [dim]; rstd [n] (kept from the forward for the backward).
// Forward, per row i (one group of 256 threads per row; the sum of squares in a fixed tree):
//   rstd_i = 1 / sqrt(mean_j(x_ij²) + eps)
//   y_ij   = w_j · (x_ij · rstd_i)              HF's order: normalise, then scale
// Backward, g = dL/dy, ĝ = w ⊙ g (∂rstd/∂x_j = −rstd³·x_j/dim):
//   dx_i = rstd_i·(ĝ_i − x_i·c_i),  c_i = rstd_i²·Σ_j ĝ_ij·x_ij / dim     (one group per row)
//   dw_j = Σ_i g_ij · (x_ij · rstd_i)                                     (ColumnSums: fixed order, no atomics)
// The row sums are reassociated (tree instead of the CPU's vector lanes): equal to the CPU within fp32 rounding.
namespace PeftKernels.Kernels.Gpu;

/// <summary>RMS normalisation forward and backward on an ILGPU accelerator.</summary>
public static class RmsNormKernels
{
    private const int Threads = 256;

    /// <summary>y = weight ⊙ (x · rstd) per row, with rstd = 1/sqrt(mean(x²) + eps) written to <paramref name="rstd"/>.</summary>
    public static void Forward(Accelerator accelerator, FloatView x, FloatView weight, float eps, FloatView y, FloatView rstd, int n, int dim)
    {
        GpuCheck.NotNull(accelerator);
        RmsNormShapes.Forward(x.Length, weight.Length, y.Length, rstd.Length, n, dim, eps);
        GpuCheck.FitsInt((long)n * dim, "x");
        if (n != 0)
        {
            Loaded.For(accelerator).Forward(new KernelConfig(n, Threads), x, weight, y, rstd, dim, eps);
        }
    }

    /// <summary>dx (skipped when empty) and dweight (overwritten with the sum over rows; skipped when empty) from dy, x and the forward's rstd.</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView weight, FloatView rstd,
        FloatView dx, FloatView dweight, int n, int dim)
    {
        GpuCheck.NotNull(accelerator);
        RmsNormShapes.Backward(dy.Length, x.Length, weight.Length, rstd.Length, dx.Length, dweight.Length, n, dim);
        GpuCheck.FitsInt((long)n * dim, "x");
        if (dx.Length != 0 && n != 0)
        {
            Loaded.For(accelerator).Backward(new KernelConfig(n, Threads), dy, x, weight, rstd, dx, dim);
        }

        if (dweight.Length != 0)
        {
            ColumnSumsKernels.Run(accelerator, new DwTerm(dy, x, rstd, dim), dweight, n, dim);
        }
    }

    internal static void ForwardKernel(FloatView x, FloatView weight, FloatView y, FloatView rstd, int dim, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(GpuMath.WarpSize);
        int row = Grid.IdxX * dim;
        float sum = 0f;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            float v = x[row + j];
            sum += v * v;
        }

        sum = GpuMath.GroupSum(sum, scratch);
        float r = 1f / GpuMath.SqrtRn((sum / dim) + eps);
        if (Group.IdxX == 0)
        {
            rstd[Grid.IdxX] = r;
        }

        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            y[row + j] = weight[j] * (x[row + j] * r);
        }
    }

    internal static void BackwardKernel(FloatView dy, FloatView x, FloatView weight, FloatView rstd, FloatView dx, int dim)
    {
        var scratch = SharedMemory.Allocate<float>(GpuMath.WarpSize);
        int row = Grid.IdxX * dim;
        float dot = 0f;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            dot += weight[j] * dy[row + j] * x[row + j];
        }

        dot = GpuMath.GroupSum(dot, scratch);
        float r = rstd[Grid.IdxX];
        float c = r * r * dot / dim;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            dx[row + j] = r * ((weight[j] * dy[row + j]) - (x[row + j] * c));
        }
    }

    /// <summary>g[i, j]·(x[i, j]·rstd[i]).</summary>
    internal readonly struct DwTerm(FloatView g, FloatView x, FloatView rstd, int dim) : IColumnTerm
    {
        private readonly FloatView g = g;
        private readonly FloatView x = x;
        private readonly FloatView rstd = rstd;
        private readonly int dim = dim;

        public float Term(int i, int j) => g[(i * dim) + j] * (x[(i * dim) + j] * rstd[i]);
    }

    private sealed class Loaded
    {
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, FloatView, int, float> Forward;
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, FloatView, FloatView, int> Backward;

        private Loaded(Accelerator accelerator)
        {
            Forward = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, FloatView, int, float>(ForwardKernel);
            Backward = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, FloatView, FloatView, int>(BackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
