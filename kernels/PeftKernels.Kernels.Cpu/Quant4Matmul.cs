// Fused 4-bit dequant-GEMM: y = x · dequant(Wq)ᵀ + bias, Wq a QuantizedWeight [out, in].
// dequant(Wq) is never materialised: the GEMM driver's Quant4Panel dequantizes one cache
// panel at a time; for n ≤ 4 the GEMV path streams the packed bytes once.
// Backward through the frozen weight (no LoRA branch): dx [n, in] = dy [n, out] · dequant(Wq),
// the same driver with the panel read untransposed.
namespace PeftKernels.Kernels.Cpu;

/// <summary>Fused 4-bit dequant-GEMM / GEMV: y = x·dequant(Wq)ᵀ + bias.</summary>
public static unsafe class Quant4Matmul
{
    /// <summary>y [n, out] = x [n, in] · dequant(w)ᵀ + bias (bias empty or [out]).</summary>
    public static void Forward(ReadOnlySpan<float> x, QuantizedWeight w, ReadOnlySpan<float> bias, Span<float> y,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(w);
        Quant4MatmulShapes.Forward(w.Shape, x.Length, bias.Length, y.Length, n, inFeatures, outFeatures);
        if (n == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        fixed (byte* pq = w.Packed)
        fixed (float* pabs = w.AbsmaxFp32(), px = x, pbias = bias, py = y)
        {
            var panel = new Quant4Panel(w, pq, pabs, true, path);
            GemmDriver.Run(options, path, threads, new DenseA(px, inFeatures, false), panel, n, outFeatures, inFeatures, 1f, 0f, py, outFeatures,
                bias.Length == 0 ? null : pbias);
        }
    }

    /// <summary>dx [n, in] = dy [n, out] · dequant(w): the input gradient through a frozen 4-bit weight.</summary>
    public static void Backward(ReadOnlySpan<float> dy, QuantizedWeight w, Span<float> dx,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(w);
        Quant4MatmulShapes.Backward(w.Shape, dy.Length, dx.Length, n, inFeatures, outFeatures);
        if (n == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        fixed (byte* pq = w.Packed)
        fixed (float* pabs = w.AbsmaxFp32(), pdy = dy, pdx = dx)
        {
            var panel = new Quant4Panel(w, pq, pabs, false, path);
            GemmDriver.Run(options, path, threads, new DenseA(pdy, outFeatures, false), panel, n, inFeatures, outFeatures, 1f, 0f, pdx, inFeatures, null);
        }
    }
}
