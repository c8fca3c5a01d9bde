// Public GPU GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, row-major fp32 (as Gemm.Multiply).
//   op(A) [m, k]: A stored [m, k], or [k, m] when transA.
//   op(B) [k, n]: B stored [k, n], or [n, k] when transB (a weight [out, in] in x·Wᵀ).
// beta = 0: C is write-only (never read), so it may be uninitialised.
// Kernels (GemmTiles, GemmTensorCore): naive for tiny problems, the 128×128 register-blocked
// shared-memory tiled kernel otherwise, and with GemmPrecision.Tf32 on sm_80+ the TF32
// tensor-core kernel (fp32 accumulation; inputs rounded to tf32, so it is opt-in).
namespace PeftKernels.Kernels.Gpu;

/// <summary>Input precision of the GPU GEMM products.</summary>
public enum GemmPrecision
{
    /// <summary>fp32 products and sums (same results as the CPU GEMM within fp32 reassociation).</summary>
    Fp32,

    /// <summary>Inputs rounded to TF32 (10-bit mantissa) on tensor cores, fp32 accumulation; falls back to fp32 where unsupported.</summary>
    Tf32,
}

/// <summary>fp32 matrix multiply on an ILGPU accelerator.</summary>
public static class GemmKernels
{
    /// <summary>C = alpha·op(A)·op(B) + beta·C, enqueued on the accelerator's default stream.</summary>
    /// <param name="accelerator">The device (CUDA, or the ILGPU CPU accelerator).</param>
    /// <param name="transA">A is stored [k, m].</param>
    /// <param name="transB">B is stored [n, k].</param>
    /// <param name="m">Rows of C.</param>
    /// <param name="n">Columns of C.</param>
    /// <param name="k">Inner dimension.</param>
    /// <param name="alpha">Scale of the product.</param>
    /// <param name="a">A, m·k elements.</param>
    /// <param name="b">B, k·n elements.</param>
    /// <param name="beta">Scale of the prior C (0: C is not read).</param>
    /// <param name="c">C, m·n elements.</param>
    /// <param name="precision">Fp32 (default) or Tf32 tensor cores where the device has them (sm_80+).</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply, or a dim is negative.</exception>
    public static void Multiply(Accelerator accelerator, bool transA, bool transB, int m, int n, int k, float alpha,
        FloatView a, FloatView b, float beta, FloatView c, GemmPrecision precision = GemmPrecision.Fp32) =>
        Multiply(accelerator, transA, transB, m, n, k, alpha, a, b, beta, c, GemmPath.Auto, precision == GemmPrecision.Tf32);

    /// <summary>True when <see cref="GemmPrecision.Tf32"/> runs on tensor cores on this accelerator (CUDA sm_80 or newer).</summary>
    public static bool SupportsTf32(Accelerator accelerator)
    {
        GpuCheck.NotNull(accelerator);
        return GemmTensorCore.IsSupported(accelerator);
    }

    internal static void Multiply(Accelerator accelerator, bool transA, bool transB, int m, int n, int k, float alpha,
        FloatView a, FloatView b, float beta, FloatView c, GemmPath path, bool allowTf32 = false)
    {
        GpuCheck.NotNull(accelerator);
        GemmShapes.Multiply(m, n, k, a.Length, b.Length, c.Length);
        GpuCheck.FitsInt(a.Length, "a");
        GpuCheck.FitsInt(b.Length, "b");
        GpuCheck.FitsInt(c.Length, "c");
        var opA = new DenseOperand(a, transA ? m : k, transA);
        var opB = new DenseOperand(b, transB ? k : n, transB);
        GemmTiles.Run(accelerator, opA, opB, new GemmEpilogue(c, n, alpha, beta), m, n, k, path, allowTf32);
    }
}
