// Public GPU GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, row-major fp32 (as Gemm.Multiply).
//   op(A) [m, k]: A stored [m, k], or [k, m] when transA.
//   op(B) [k, n]: B stored [k, n], or [n, k] when transB (a weight [out, in] in x·Wᵀ).
// beta = 0: C is write-only (never read), so it may be uninitialised.
// Kernels (GemmTiles, GemmTensorCore): naive for tiny problems, the 128×128 register-blocked
// shared-memory tiled kernel otherwise, and with GemmPrecision.Tf32 on sm_80+ the TF32
// tensor-core kernel (fp32 accumulation; inputs rounded to tf32, so it is opt-in).
// Through a frozen weight operand W [out, in] (DeviceWeightOperand, dense fp32 or 4-bit):
//   Forward  y  = x · Wᵀ + bias   [n, out]   (4-bit: Quant4MatmulKernels.Forward)
//   Backward dx = dy · W          [n, in]    (4-bit: Quant4MatmulKernels.Backward)
namespace PeftKernels.Kernels.Gpu;

/// <summary>Input precision of the GPU GEMM products.</summary>
public enum GemmPrecision
{
    /// <summary>fp32 products and sums (same results as the CPU GEMM within fp32 reassociation).</summary>
    Fp32,

    /// <summary>Inputs rounded to TF32 (10-bit mantissa) on tensor cores, fp32 accumulation; falls back to fp32 where unsupported.</summary>
    Tf32,
}

/// <summary>fp32 matrix multiply on an ILGPU accelerator, and x·Wᵀ / dy·W through a frozen weight operand.</summary>
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

    /// <summary>y [n, outFeatures] = x [n, inFeatures] · wᵀ + bias (bias [outFeatures] added to each row, or empty), enqueued on the default stream.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">Input [n, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures]: dense fp32 through the GEMM, 4-bit through Quant4MatmulKernels.</param>
    /// <param name="bias">Bias [outFeatures], or empty for none.</param>
    /// <param name="y">Output [n, outFeatures] (write-only).</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">A view's length or w's shape differs from what the dims imply, or a dim is out of range.</exception>
    public static void Forward(Accelerator accelerator, FloatView x, in DeviceWeightOperand w, FloatView bias, FloatView y,
        int n, int inFeatures, int outFeatures)
    {
        if (w.IsQuantized)
        {
            Quant4MatmulKernels.Forward(accelerator, x, w.QuantView, bias, y, n, inFeatures, outFeatures);
            return;
        }

        ValidateOperand(accelerator, w, n, inFeatures, outFeatures);
        Check.Length(nameof(x), x.Length, (long)n * inFeatures, "n·inFeatures");
        Check.LengthOrEmpty(nameof(bias), bias.Length, outFeatures, "outFeatures, or empty");
        Check.Length(nameof(y), y.Length, (long)n * outFeatures, "n·outFeatures");
        Multiply(accelerator, false, true, n, outFeatures, inFeatures, 1f, x, w.DenseView, 0f, y, GemmPath.Auto);

        // The bias is added after the whole sum, row by row (as the CPU Gemm.Forward).
        if (bias.Length != 0)
        {
            AddKernels.Forward(accelerator, y, bias, y);
        }
    }

    /// <summary>dx [n, inFeatures] = dy [n, outFeatures] · w: the input gradient through a frozen weight, enqueued on the default stream.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dy">Gradient of the output [n, outFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures]: dense fp32 through the GEMM, 4-bit through Quant4MatmulKernels.</param>
    /// <param name="dx">Output [n, inFeatures] (write-only).</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">A view's length or w's shape differs from what the dims imply, or a dim is out of range.</exception>
    public static void Backward(Accelerator accelerator, FloatView dy, in DeviceWeightOperand w, FloatView dx, int n, int inFeatures, int outFeatures)
    {
        if (w.IsQuantized)
        {
            Quant4MatmulKernels.Backward(accelerator, dy, w.QuantView, dx, n, inFeatures, outFeatures);
            return;
        }

        ValidateOperand(accelerator, w, n, inFeatures, outFeatures);
        Check.Length(nameof(dy), dy.Length, (long)n * outFeatures, "n·outFeatures");
        Check.Length(nameof(dx), dx.Length, (long)n * inFeatures, "n·inFeatures");
        Multiply(accelerator, false, false, n, inFeatures, outFeatures, 1f, dy, w.DenseView, 0f, dx, GemmPath.Auto);
    }

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

    private static void ValidateOperand(Accelerator accelerator, in DeviceWeightOperand w, int n, int inFeatures, int outFeatures)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, "n");
        Check.Positive(inFeatures, "inFeatures");
        Check.Positive(outFeatures, "outFeatures");
        w.CheckShape(inFeatures, outFeatures);
    }
}
