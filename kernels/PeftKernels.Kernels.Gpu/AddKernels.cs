// Broadcast add on the GPU: a [n, dim], b [dim] or [n, dim] (repeated over the rows of a), y [n, dim]:
//   y_ij = a_ij + b_(i·dim + j) mod |b|
// Residual connections (|b| = |a|) and bias rows (|b| = dim). Backward (autograd level):
// da = dy, db = dy or its column sums (ColumnSumsKernels.Add, deterministic, no atomics).
// y may be a itself (in place).
namespace PeftKernels.Kernels.Gpu;

/// <summary>Element-wise and bias-row addition on an ILGPU accelerator.</summary>
public static class AddKernels
{
    /// <summary>y = a + b, with b [dim] repeated over the rows when shorter; <paramref name="y"/> may be <paramref name="a"/>.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="a">a [n·dim].</param>
    /// <param name="b">b, dim elements or as many as a; its length must divide a's.</param>
    /// <param name="y">y, as many elements as a.</param>
    public static void Forward(Accelerator accelerator, FloatView a, FloatView b, FloatView y)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(a.Length, "a");
        Check.Length(nameof(y), y.Length, a.Length, "a.Length");
        Check.Require(a.Length == 0 || (b.Length > 0 && a.Length % b.Length == 0), nameof(b),
            $"b has {b.Length} elements; it must be non-empty and divide a's {a.Length} (a row of a, or all of it).");
        if (a.Length != 0)
        {
            Loaded.For(accelerator).Add((int)a.Length, a, b, y, (int)b.Length);
        }
    }

    internal static void AddKernel(Index1D i, FloatView a, FloatView b, FloatView y, int period) => y[i] = a[i] + b[i % period];

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int> Add;

        private Loaded(Accelerator accelerator) =>
            Add = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int>(AddKernel);

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
