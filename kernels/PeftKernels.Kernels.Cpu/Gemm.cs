// Public GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, row-major fp32 (internally B may
// also be bf16 bit patterns or fp16, widened while packing).
//   op(A) [m, k]: A stored [m, k], or [k, m] when transA.
//   op(B) [k, n]: B stored [k, n], or [n, k] when transB (a weight [out, in] in x·Wᵀ).
// beta = 0: C is write-only (never read), so it may be uninitialised.
// Through a frozen weight operand W [out, in] of any storage (WeightOperand):
//   Forward  y  = x · Wᵀ + bias   [n, out]   (4-bit: Quant4Matmul.Forward)
//   Backward dx = dy · W          [n, in]    (4-bit: Quant4Matmul.Backward)
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Blocked, vectorised, multithreaded fp32 matrix multiply, and x·Wᵀ / dy·W through a frozen weight of any storage.</summary>
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
    internal static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
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
    internal static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<Half> b, float beta, Span<float> c, KernelOptions options = default)
    {
        GemmShapes.Multiply(m, n, k, a.Length, b.Length, c.Length);
        fixed (Half* pb = b)
        {
            Run(transA, m, n, k, alpha, a, new F16B(pb, transB ? k : n, transB, k), beta, c, options);
        }
    }

    /// <summary>y [n, outFeatures] = x [n, inFeatures] · wᵀ + bias (bias [outFeatures] added to each row, or empty), over any storage of w.</summary>
    /// <param name="x">Input [n, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures]: fp32, bf16 or fp16 through the GEMM, 4-bit through Quant4Matmul.</param>
    /// <param name="bias">Bias [outFeatures], or empty for none.</param>
    /// <param name="y">Output [n, outFeatures] (write-only).</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length or w's shape differs from what the dims imply, or a dim is out of range.</exception>
    public static void Forward(ReadOnlySpan<float> x, in WeightOperand w, ReadOnlySpan<float> bias, Span<float> y,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        if (w.Storage == WeightFormat.Q4)
        {
            Quant4Matmul.Forward(x, w.Quantized, bias, y, n, inFeatures, outFeatures, options);
            return;
        }

        ValidateOperand(w, n, inFeatures, outFeatures);
        Check.Length("x", x.Length, (long)n * inFeatures, "n·inFeatures");
        if (bias.Length != 0)
        {
            Check.Length("bias", bias.Length, outFeatures, "outFeatures, or empty");
        }

        Check.Length("y", y.Length, (long)n * outFeatures, "n·outFeatures");
        MultiplyByWeight(true, n, outFeatures, inFeatures, x, w, y, options);

        // The bias is added after the whole sum (not in the GEMM's first K block), row by row.
        if (bias.Length != 0)
        {
            for (int i = 0; i < n; i++)
            {
                var row = y.Slice(i * outFeatures, outFeatures);
                TensorPrimitives.Add(row, bias, row);
            }
        }
    }

    /// <summary>dx [n, inFeatures] = dy [n, outFeatures] · w: the input gradient through a frozen weight of any storage.</summary>
    /// <param name="dy">Gradient of the output [n, outFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures]: fp32, bf16 or fp16 through the GEMM, 4-bit through Quant4Matmul.</param>
    /// <param name="dx">Output [n, inFeatures] (write-only).</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length or w's shape differs from what the dims imply, or a dim is out of range.</exception>
    public static void Backward(ReadOnlySpan<float> dy, in WeightOperand w, Span<float> dx,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        if (w.Storage == WeightFormat.Q4)
        {
            Quant4Matmul.Backward(dy, w.Quantized, dx, n, inFeatures, outFeatures, options);
            return;
        }

        ValidateOperand(w, n, inFeatures, outFeatures);
        Check.Length("dy", dy.Length, (long)n * outFeatures, "n·outFeatures");
        Check.Length("dx", dx.Length, (long)n * inFeatures, "n·inFeatures");
        MultiplyByWeight(false, n, inFeatures, outFeatures, dy, w, dx, options);
    }

    /// <summary>c = a · op(w) with a dense (fp32, bf16 or fp16) weight: the Multiply overload of w's storage.</summary>
    private static void MultiplyByWeight(bool transB, int m, int n, int k, ReadOnlySpan<float> a, in WeightOperand w, Span<float> c, KernelOptions options)
    {
        // bf16 compute keeps the packed panels of w across calls when the operand carries a cache (WeightPanelCache).
        var kept = new WeightPanels(WeightPanels.Of(w, options), transB ? WeightPanelLayout.Transposed : WeightPanelLayout.Rows, k);
        int ldb = transB ? k : n;
        switch (w.Storage)
        {
            case WeightFormat.F32:
                fixed (float* pb = w.F32Span)
                {
                    Run(false, m, n, k, 1f, a, new DenseB(pb, ldb, transB, k), 0f, c, options, kept);
                }

                break;
            case WeightFormat.BF16:
                fixed (ushort* pb = w.Bf16Span)
                {
                    Run(false, m, n, k, 1f, a, new Bf16B(pb, ldb, transB, k), 0f, c, options, kept);
                }

                break;
            default:
                fixed (Half* pb = w.F16Span)
                {
                    Run(false, m, n, k, 1f, a, new F16B(pb, ldb, transB, k), 0f, c, options, kept);
                }

                break;
        }
    }

    /// <summary>The shared body of the overloads: dense op(A), any B source, after validation.</summary>
    private static void Run<TB>(bool transA, int m, int n, int k, float alpha, ReadOnlySpan<float> a, TB sb, float beta, Span<float> c, KernelOptions options,
        in WeightPanels weight = default)
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
            GemmDriver.Run(options, path, threads, new DenseA(pa, transA ? m : k, transA), sb, m, n, k, alpha, beta, pc, n, null, default, weight);
        }
    }

    private static void ValidateOperand(in WeightOperand w, int n, int inFeatures, int outFeatures)
    {
        Check.NonNegative(n, "n");
        Check.Positive(inFeatures, "inFeatures");
        Check.Positive(outFeatures, "outFeatures");
        w.CheckShape(inFeatures, outFeatures);
    }
}
