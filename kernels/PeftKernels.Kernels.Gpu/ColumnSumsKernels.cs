// Deterministic column sums on the GPU, for the parameter gradients that sum over rows: the bias
// gradient (public Add: dst[j] += scale · Σ_i g[i, j], the CPU's ColumnSums.Add) and, internally,
// IA³'s dl and RMSNorm's dweight (out[j] = Σ_i term(i, j), overwritten). No atomics: one group of
// 256 threads covers 32 columns; thread (slice s, column c) sums the rows i ≡ s (mod 8) in ascending
// order, then the 8 slice partials of a column are added in slice order. The order depends only on
// n, so the result is the same on every run and every device (up to the device's fp32 rounding).
// The scale is one IEEE-rounded multiply and the accumulation one rounded add (mul.rn / add.rn: no
// FMA contraction); scale = 1 leaves the sum unchanged.
namespace PeftKernels.Kernels.Gpu;

/// <summary>One term of a column sum, read inside the kernel.</summary>
internal interface IColumnTerm
{
    float Term(int i, int j);
}

/// <summary>Deterministic column sums (the bias gradient) on an ILGPU accelerator.</summary>
public static class ColumnSumsKernels
{
    internal const int Columns = 32;
    internal const int Slices = 8;

    /// <summary>dst[j] += scale·Σ_i g[i, j] for g [rows, cols] and dst [cols]. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="g">The rows to sum [rows, cols] (a gradient dL/dy).</param>
    /// <param name="dst">The accumulator [cols] (a bias gradient).</param>
    /// <param name="rows">Rows of g.</param>
    /// <param name="cols">Columns of g and length of dst.</param>
    /// <param name="scale">Multiplies the sums before they are added (1: unchanged).</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, a dim is out of range, or scale is not finite.</exception>
    public static void Add(Accelerator accelerator, FloatView g, FloatView dst, int rows, int cols, float scale = 1f)
    {
        GpuCheck.NotNull(accelerator);
        ColumnSumsShapes.Sum(g.Length, dst.Length, rows, cols, scale);
        GpuCheck.FitsInt(g.Length, nameof(g));
        Launch(accelerator, new RowTerm(g, cols), dst, rows, cols, scale, accumulate: true);
    }

    /// <summary>output[j] = Σ_i term(i, j) (overwritten), after the caller's checks.</summary>
    internal static void Run<T>(Accelerator accelerator, T term, FloatView output, int n, int dim)
        where T : struct, IColumnTerm =>
        Launch(accelerator, term, output, n, dim, 1f, accumulate: false);

    private static void Launch<T>(Accelerator accelerator, T term, FloatView output, int n, int dim, float scale, bool accumulate)
        where T : struct, IColumnTerm
    {
        if (dim == 0)
        {
            return;
        }

        var config = new KernelConfig(GemmTiles.Ceil(dim, Columns), Columns * Slices);
        GpuKernelCache.Get(accelerator, static a => new Loaded<T>(a)).Sum(config, term, output, n, dim, scale, accumulate ? 1 : 0);
    }

    // accumulate is a 0/1 int: kernel parameters must be blittable.
    internal static void Kernel<T>(T term, FloatView output, int n, int dim, float scale, int accumulate)
        where T : struct, IColumnTerm
    {
        var partial = SharedMemory.Allocate<float>(Columns * Slices);
        int c = Group.IdxX % Columns, slice = Group.IdxX / Columns, j = (Grid.IdxX * Columns) + c;
        float sum = 0f;
        if (j < dim)
        {
            for (int i = slice; i < n; i += Slices)
            {
                sum += term.Term(i, j);
            }
        }

        partial[Group.IdxX] = sum;
        Group.Barrier();
        if (slice == 0 && j < dim)
        {
            float total = partial[c];
            for (int s = 1; s < Slices; s++)
            {
                total += partial[(s * Columns) + c];
            }

            total = GpuMath.MulRn(total, scale);
            output[j] = accumulate != 0 ? GpuMath.AddRn(output[j], total) : total;
        }
    }

    /// <summary>g[i, j].</summary>
    internal readonly struct RowTerm(FloatView g, int cols) : IColumnTerm
    {
        private readonly FloatView g = g;
        private readonly int cols = cols;

        public float Term(int i, int j) => g[(i * cols) + j];
    }

    private sealed class Loaded<T>(Accelerator accelerator)
        where T : struct, IColumnTerm
    {
        public readonly Action<KernelConfig, T, FloatView, int, int, float, int> Sum = accelerator.LoadStreamKernel<T, FloatView, int, int, float, int>(Kernel);
    }
}
