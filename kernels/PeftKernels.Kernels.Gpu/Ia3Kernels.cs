// IA³ on the GPU: learned per-feature scaling of activations. Shapes, row-major: x, y, dy, dx [n, dim];
// l, dl [dim].
// Forward:   y_ij = x_ij · l_j
// Backward, g = dL/dy (y is linear in x and in l):
//   dx_ij = g_ij · l_j               (skipped when dx is empty)
//   dl_j  = Σ_i g_ij · x_ij          (column sums in a fixed order, ColumnSums: no atomics)
namespace PeftKernels.Kernels.Gpu;

/// <summary>IA³ column scaling forward and backward on an ILGPU accelerator.</summary>
public static class Ia3Kernels
{
    /// <summary>y[i, j] = x[i, j]·l[j].</summary>
    public static void Forward(Accelerator accelerator, FloatView x, FloatView l, FloatView y, int n, int dim)
    {
        Validate(accelerator, n, dim, l);
        Check.Length(nameof(x), x.Length, (long)n * dim, "n·dim");
        Check.Length(nameof(y), y.Length, (long)n * dim, "n·dim");
        if (n != 0)
        {
            Loaded.For(accelerator).Scale(n * dim, x, l, y, dim);
        }
    }

    /// <summary>dx = dy ⊙ l (skipped when <paramref name="dx"/> is empty) and dl[j] = Σ_i dy[i, j]·x[i, j] (overwritten).</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView l, FloatView dx, FloatView dl, int n, int dim)
    {
        Validate(accelerator, n, dim, l);
        Check.Length(nameof(dy), dy.Length, (long)n * dim, "n·dim");
        Check.Length(nameof(x), x.Length, (long)n * dim, "n·dim");
        Check.LengthOrEmpty(nameof(dx), dx.Length, (long)n * dim, "n·dim, or empty to skip");
        Check.Length(nameof(dl), dl.Length, dim, "dim");
        if (dx.Length != 0)
        {
            Loaded.For(accelerator).Scale(n * dim, dy, l, dx, dim);
        }

        ColumnSums.Run(accelerator, new ProductTerm(dy, x, dim), dl, n, dim);
    }

    internal static void ScaleKernel(Index1D i, FloatView x, FloatView l, FloatView y, int dim) => y[i] = x[i] * l[i % dim];

    private static void Validate(Accelerator accelerator, int n, int dim, FloatView l)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, "n");
        Check.Positive(dim, "dim");
        Check.Length(nameof(l), l.Length, dim, "dim");
        GpuCheck.FitsInt((long)n * dim, "x");
    }

    /// <summary>g[i, j]·x[i, j].</summary>
    internal readonly struct ProductTerm(FloatView g, FloatView x, int dim) : IColumnTerm
    {
        private readonly FloatView g = g;
        private readonly FloatView x = x;
        private readonly int dim = dim;

        public float Term(int i, int j) => g[(i * dim) + j] * x[(i * dim) + j];
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int> Scale;

        private Loaded(Accelerator accelerator) =>
            Scale = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int>(ScaleKernel);

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
