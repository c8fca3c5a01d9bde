// Deterministic column sums on the GPU, for the parameter gradients that sum over rows
// (IA³ dl, RMSNorm dweight): out[j] = Σ_i term(i, j), no atomics. One group of 256 threads
// covers 32 columns: thread (slice s, column c) sums the rows i ≡ s (mod 8) in ascending order,
// then the 8 slice partials of a column are added in slice order. The order depends only on n,
// so the result is the same on every run and every device (up to the device's fp32 rounding).
namespace PeftKernels.Kernels.Gpu;

/// <summary>One term of a column sum, read inside the kernel.</summary>
internal interface IColumnTerm
{
    float Term(int i, int j);
}

internal static class ColumnSums
{
    public const int Columns = 32;
    public const int Slices = 8;

    public static void Run<T>(Accelerator accelerator, T term, FloatView output, int n, int dim)
        where T : struct, IColumnTerm
    {
        if (dim == 0)
        {
            return;
        }

        var config = new KernelConfig(GemmTiles.Ceil(dim, Columns), Columns * Slices);
        GpuKernelCache.Get(accelerator, static a => new Loaded<T>(a)).Sum(config, term, output, n, dim);
    }

    internal static void Kernel<T>(T term, FloatView output, int n, int dim)
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

            output[j] = total;
        }
    }

    private sealed class Loaded<T>(Accelerator accelerator)
        where T : struct, IColumnTerm
    {
        public readonly Action<KernelConfig, T, FloatView, int, int> Sum = accelerator.LoadStreamKernel<T, FloatView, int, int>(Kernel);
    }
}
