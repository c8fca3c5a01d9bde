// Public GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, row-major fp32 (B may be bf16).
//   op(A) [m, k]: A stored [m, k], or [k, m] when transA.
//   op(B) [k, n]: B stored [k, n], or [n, k] when transB (a weight [out, in] in x·Wᵀ).
// beta = 0: C is write-only (never read), so it may be uninitialised.
namespace PeftKernels.Kernels.Cpu;

/// <summary>Blocked, vectorised, multithreaded fp32 matrix multiply.</summary>
public static unsafe class Gemm
{
    /// <summary>C = alpha·op(A)·op(B) + beta·C with fp32 A and B.</summary>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply, or a dim is negative.</exception>
    public static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float beta, Span<float> c, KernelOptions options = default)
    {
        GemmShapes.Multiply(m, n, k, a.Length, b.Length, c.Length);
        fixed (float* pb = b)
        {
            Run(transA, m, n, k, alpha, a, new DenseB(pb, transB ? k : n, transB, k), beta, c, options);
        }
    }

    /// <summary>C = alpha·op(A)·op(B) + beta·C with B given as bf16 bit patterns, widened to fp32 in registers.</summary>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply, or a dim is negative.</exception>
    public static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<ushort> b, float beta, Span<float> c, KernelOptions options = default)
    {
        GemmShapes.Multiply(m, n, k, a.Length, b.Length, c.Length);
        fixed (ushort* pb = b)
        {
            Run(transA, m, n, k, alpha, a, new Bf16B(pb, transB ? k : n, transB, k), beta, c, options);
        }
    }

    /// <summary>C = alpha·op(A)·op(B) + beta·C with B given as IEEE fp16, widened to fp32 while packing.</summary>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply, or a dim is negative.</exception>
    public static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<Half> b, float beta, Span<float> c, KernelOptions options = default)
    {
        GemmShapes.Multiply(m, n, k, a.Length, b.Length, c.Length);
        fixed (Half* pb = b)
        {
            Run(transA, m, n, k, alpha, a, new F16B(pb, transB ? k : n, transB, k), beta, c, options);
        }
    }

    /// <summary>The shared body of the overloads: dense op(A), any B source, after validation.</summary>
    private static void Run<TB>(bool transA, int m, int n, int k, float alpha, ReadOnlySpan<float> a, TB sb, float beta, Span<float> c, KernelOptions options)
        where TB : struct, IPanelB
    {
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        if (m == 0 || n == 0)
        {
            return;
        }

        fixed (float* pa = a, pc = c)
        {
            GemmDriver.Run(path, threads, new DenseA(pa, transA ? m : k, transA), sb, m, n, k, alpha, beta, pc, n, null);
        }
    }
}
