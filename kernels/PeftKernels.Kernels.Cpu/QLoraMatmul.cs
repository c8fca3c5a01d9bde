// QLoRA linear: the LoRA math of LoraMatmul with the frozen base weight held in 4 bits
// (QuantizedWeight [out, in], NF4/FP4, optionally double-quantized).
//   h = drop(x)·aᵀ;  y = [x | s·h] · [dequant(Wq) | b]ᵀ + bias
//                  backward as LoraMatmul, dx through the frozen dequant(Wq):
//                  dx = [g | dh] · [dequant(Wq) ; a]  (masked K ≥ out part with dropout)
// dequant(Wq) is never materialised: the GEMM driver's Quant4Panel dequantizes one cache
// panel (or one GEMV row chunk) at a time.
namespace PeftKernels.Kernels.Cpu;

/// <summary>QLoRA linear: LoRA over a frozen 4-bit base weight, forward and backward.</summary>
public static unsafe class QLoraMatmul
{
    /// <summary>y = x·dequant(w)ᵀ + bias + scale·(drop(x)·aᵀ)·bᵀ and h = drop(x)·aᵀ (kept for backward).</summary>
    public static void Forward(ReadOnlySpan<float> x, QuantizedWeight w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(w);
        QLoraMatmulShapes.Forward(w.Shape, w.Count, x.Length, bias.Length, a.Length, b.Length, y.Length, h.Length,
            n, inFeatures, outFeatures, rank, options);
        var path = options.Kernel.ResolvePath();
        fixed (byte* pq = w.Packed)
        fixed (float* pabs = w.AbsmaxFp32())
        {
            var panel = new Quant4Panel(w, pq, pabs, true, path);
            LoraMatmul.ForwardCore(panel, x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>dx (skipped when empty) through the frozen dequant(w), da (skipped when empty) and db.</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        QuantizedWeight w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank,
        in LoraOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(w);
        QLoraMatmulShapes.Backward(w.Shape, w.Count, dy.Length, x.Length, h.Length, a.Length, b.Length, dx.Length, da.Length, db.Length,
            n, inFeatures, outFeatures, rank, options);
        var path = options.Kernel.ResolvePath();
        fixed (byte* pq = w.Packed)
        fixed (float* pabs = w.AbsmaxFp32())
        {
            var panel = new Quant4Panel(w, pq, pabs, false, path);
            LoraMatmul.BackwardCore(panel, dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options);
        }
    }
}
