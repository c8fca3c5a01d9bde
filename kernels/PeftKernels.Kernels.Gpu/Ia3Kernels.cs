// Column scaling on the GPU (Ia3.ScaleColumns on the CPU): y = x ⊙ l with l broadcast over the rows:
// IA³'s learned per-feature scaling of activations, and DoRA's c ⊙ z. Shapes, row-major:
// x, y, dy, dx [n, features]; l, dl [features].
// Forward:   y_ij = x_ij · l_j
// Backward, g = dL/dy (y is linear in x and in l):
//   dx_ij = g_ij · l_j               (skipped when dx is empty; does not read x)
//   dl_j  = Σ_i g_ij · x_ij          (skipped when dl is empty; column sums in a fixed order, ColumnSums: no atomics)
namespace PeftKernels.Kernels.Gpu;

/// <summary>Column scaling (IA³, DoRA's c ⊙ z) forward and backward on an ILGPU accelerator.</summary>
public static class Ia3Kernels
{
    /// <summary>y[i, j] = x[i, j]·l[j]; <paramref name="y"/> may be <paramref name="x"/>. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">x [n, features].</param>
    /// <param name="l">The per-column scale [features].</param>
    /// <param name="y">y [n, features].</param>
    /// <param name="n">Rows.</param>
    /// <param name="features">Columns.</param>
    public static void ScaleColumns(Accelerator accelerator, FloatView x, FloatView l, FloatView y, int n, int features)
    {
        GpuCheck.NotNull(accelerator);
        Ia3Shapes.ScaleColumns(x.Length, l.Length, y.Length, n, features);
        GpuCheck.FitsInt((long)n * features, "x");
        if (n != 0)
        {
            Loaded.For(accelerator).Scale(n * features, x, l, y, features);
        }
    }

    /// <summary>dx = dy ⊙ l (skipped when <paramref name="dx"/> is empty) and dl[j] = Σ_i dy[i, j]·x[i, j] (overwritten; skipped when empty). Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dy">dy [n, features].</param>
    /// <param name="x">The forward's x [n, features]; may be empty when dl is.</param>
    /// <param name="l">The per-column scale [features].</param>
    /// <param name="dx">dx [n, features], or empty to skip.</param>
    /// <param name="dl">dl [features], or empty to skip.</param>
    /// <param name="n">Rows.</param>
    /// <param name="features">Columns.</param>
    public static void ScaleColumnsBackward(Accelerator accelerator, FloatView dy, FloatView x, FloatView l, FloatView dx, FloatView dl, int n, int features)
    {
        GpuCheck.NotNull(accelerator);
        Ia3Shapes.ScaleColumnsBackward(dy.Length, x.Length, l.Length, dx.Length, dl.Length, n, features);
        GpuCheck.FitsInt((long)n * features, "x");
        if (dx.Length != 0 && n != 0)
        {
            Loaded.For(accelerator).Scale(n * features, dy, l, dx, features);
        }

        if (dl.Length != 0)
        {
            ColumnSumsKernels.Run(accelerator, new ProductTerm(dy, x, features), dl, n, features);
        }
    }

    internal static void ScaleKernel(Index1D i, FloatView x, FloatView l, FloatView y, int dim) => y[i] = x[i] * l[i % dim];

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
