// QLoRA linear on the GPU: the LoRA math of LoraMatmulKernels with the frozen base weight a
// Quant4View [out, in] (NF4/FP4; double-quantized scales decoded at upload):
//   h = drop(x)·aᵀ;  y = [x | s·h] · [dequant(Wq) | b]ᵀ + bias
//   backward as LoRA, dx through the frozen dequant(Wq): dx = [g | dh] · [dequant(Wq) ; a]
// dequant(Wq) is never materialised (Quant4Operand dequantizes per tile element). For n ≤ 4
// (decode) the base product is the 4-bit GEMV and the LoRA term is added by a K = r GEMM with beta = 1.
namespace PeftKernels.Kernels.Gpu;

/// <summary>QLoRA linear on an ILGPU accelerator: LoRA over a frozen 4-bit base weight, forward and backward.</summary>
public static class QLoraMatmulKernels
{
    /// <summary>y = x·dequant(w)ᵀ + bias + scale·(drop(x)·aᵀ)·bᵀ and h = drop(x)·aᵀ (kept for backward).</summary>
    public static void Forward(Accelerator accelerator, FloatView x, in Quant4View w, FloatView bias, FloatView a, FloatView b, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, LoraOptions options = default) =>
        Forward(accelerator, x, w, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, GemmPath.Auto, allowGemv: true);

    /// <summary>dx (skipped when empty) through the frozen dequant(w), da (skipped when empty) and db.</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView h, in Quant4View w, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, LoraOptions options = default) =>
        Backward(accelerator, dy, x, h, w, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, GemmPath.Auto);

    internal static void Forward(Accelerator accelerator, FloatView x, in Quant4View w, FloatView bias, FloatView a, FloatView b, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path, bool allowGemv)
    {
        GpuCheck.NotNull(accelerator);
        QLoraMatmulShapes.Forward([w.Rows, w.Cols], w.Count, x.Length, bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        LoraMatmulKernels.FitInt(x.Length, w.Count, y.Length);
        if (allowGemv && n > 0 && n <= Quant4MatmulKernels.GemvMaxRows)
        {
            var mask = new GpuDropout(options.Dropout, options.Seed);
            GemmTiles.Run(accelerator, new DenseOperand(x, inFeatures, false, 1f, mask), new DenseOperand(a, inFeatures, true),
                new GemmEpilogue(h, rank, 1f, 0f), n, rank, inFeatures, path);
            Quant4MatmulKernels.Gemv(accelerator, x, w, bias, y, n, inFeatures, outFeatures);
            GemmTiles.Run(accelerator, new DenseOperand(h, rank, false, scale), new DenseOperand(b, rank, true),
                new GemmEpilogue(y, outFeatures, 1f, 1f), n, outFeatures, rank, path);
            return;
        }

        var wT = new Quant4Operand(w, GpuTables.For(accelerator).Table(w.Type), trans: true);
        LoraMatmulKernels.ForwardCore(accelerator, wT, x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, path);
    }

    internal static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView h, in Quant4View w, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path)
    {
        GpuCheck.NotNull(accelerator);
        QLoraMatmulShapes.Backward([w.Rows, w.Cols], w.Count, dy.Length, x.Length, h.Length, a.Length, b.Length, dx.Length, da.Length, db.Length,
            n, inFeatures, outFeatures, rank, options);
        LoraMatmulKernels.FitInt((long)n * inFeatures, w.Count, dy.Length);
        var op = new Quant4Operand(w, GpuTables.For(accelerator).Table(w.Type), trans: false);
        LoraMatmulKernels.BackwardCore(accelerator, op, dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, path);
    }
}
