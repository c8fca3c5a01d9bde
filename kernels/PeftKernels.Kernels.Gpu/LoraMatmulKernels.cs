// Fused LoRA linear on the GPU (W frozen), LoraMatmul's math on views. Shapes, row-major:
// x [n, in], w [out, in], bias [out] or empty, a [r, in], b [out, r], h [n, r], y [n, out];
// s = scale; drop() is the seeded dropout of the LoRA branch (GpuDropout = DropoutMask),
// regenerated from (seed, index of x) in backward, never stored.
// Forward (two GEMMs on the GemmTiles core, operands composed, no copies):
//   h = drop(x) · aᵀ                                (K = in)
//   y = [x | s·h] · [w | b]ᵀ + bias                 (one GEMM, K = in + r; y written once)
// Backward, g = dL/dy (chain rule through y = x·wᵀ + s·h·bᵀ, h = drop(x)·aᵀ):
//   dh = s · g · b          [n, r]       (a temporary on the device)
//   db = s · gᵀ · h         [out, r]
//   da = dhᵀ · drop(x)      [r, in]      (skipped when da is empty: LoRA-FA)
//   dx = [g | dh] · [w ; a] [n, in]      (one GEMM, K = out + r, without dropout; with dropout
//                                          dx = g·w, then dx += mask ⊙ (dh·a)/(1−p) in the epilogue)
// w is a DeviceWeightOperand: dense fp32 runs here; a 4-bit one runs QLoraMatmulKernels, which
// calls the same ForwardCore / BackwardCore with a Quant4Operand (or its decode GEMV).
namespace PeftKernels.Kernels.Gpu;

/// <summary>Fused LoRA matmul forward and backward on an ILGPU accelerator, over a dense fp32 or a 4-bit frozen weight.</summary>
public static class LoraMatmulKernels
{
    /// <summary>y = x·wᵀ + bias + scale·(drop(x)·aᵀ)·bᵀ and h = drop(x)·aᵀ (kept for backward).</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">Input [n, in].</param>
    /// <param name="w">Frozen weight [out, in]: dense fp32, or 4-bit (QLoraMatmulKernels' body).</param>
    /// <param name="bias">Bias [out], or empty.</param>
    /// <param name="a">LoRA A [r, in].</param>
    /// <param name="b">LoRA B [out, r].</param>
    /// <param name="scale">LoRA scale (alpha / r).</param>
    /// <param name="y">Output [n, out].</param>
    /// <param name="h">Output [n, r]: drop(x)·aᵀ, needed by Backward.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout and seed of the LoRA branch (the Kernel part is ignored on the GPU).</param>
    public static void Forward(Accelerator accelerator, FloatView x, in DeviceWeightOperand w, FloatView bias, FloatView a, FloatView b, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default) =>
        Forward(accelerator, x, w, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, GemmPath.Auto);

    /// <summary>dx (skipped when empty), da (skipped when empty: LoRA-FA) and db, with w frozen; the same dropout and seed as the forward.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dy">Gradient of y [n, out].</param>
    /// <param name="x">Input [n, in]; may be empty when da is empty.</param>
    /// <param name="h">The forward's h [n, r].</param>
    /// <param name="w">Frozen weight [out, in]: dense fp32, or 4-bit (QLoraMatmulKernels' body).</param>
    /// <param name="a">LoRA A [r, in].</param>
    /// <param name="b">LoRA B [out, r].</param>
    /// <param name="scale">LoRA scale.</param>
    /// <param name="dx">Output [n, in], or empty to skip.</param>
    /// <param name="da">Output [r, in], or empty to skip (LoRA-FA).</param>
    /// <param name="db">Output [out, r].</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout and seed, as in the forward.</param>
    /// <remarks>Allocates an [n, r] temporary and waits for the accelerator before freeing it.</remarks>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView h, in DeviceWeightOperand w, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default) =>
        Backward(accelerator, dy, x, h, w, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, GemmPath.Auto);

    internal static void Forward(Accelerator accelerator, FloatView x, in DeviceWeightOperand w, FloatView bias, FloatView a, FloatView b, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path)
    {
        if (w.IsQuantized)
        {
            QLoraMatmulKernels.Forward(accelerator, x, w.QuantView, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, path, allowGemv: true);
            return;
        }

        ValidateForward(accelerator, x, w.Count, bias, a, b, y, h, n, inFeatures, outFeatures, rank, options);
        w.CheckShape(inFeatures, outFeatures);
        ForwardCore(accelerator, new DenseOperand(w.DenseView, inFeatures, true), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, path);
    }

    internal static void Backward(Accelerator accelerator, FloatView dy, FloatView x, FloatView h, in DeviceWeightOperand w, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path)
    {
        if (w.IsQuantized)
        {
            QLoraMatmulKernels.Backward(accelerator, dy, x, h, w.QuantView, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, path);
            return;
        }

        ValidateBackward(accelerator, dy, x, h, w.Count, a, b, dx, da, db, n, inFeatures, outFeatures, rank, options);
        w.CheckShape(inFeatures, outFeatures);
        BackwardCore(accelerator, new DenseOperand(w.DenseView, inFeatures, false), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, path);
    }

    // wT is op(B) = wᵀ [in, out]: the frozen weight read transposed.
    internal static void ForwardCore<TW>(Accelerator accelerator, TW wT, FloatView x, FloatView bias, FloatView a, FloatView b, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path)
        where TW : struct, IGemmOperand
    {
        if (n == 0)
        {
            return;
        }

        var mask = new GpuDropout(options.Dropout, options.Seed);
        GemmTiles.Run(accelerator, new DenseOperand(x, inFeatures, false, 1f, mask), new DenseOperand(a, inFeatures, true),
            new GemmEpilogue(h, rank, 1f, 0f), n, rank, inFeatures, path);
        var lhs = new ConcatColumns<DenseOperand, DenseOperand>(new DenseOperand(x, inFeatures, false), new DenseOperand(h, rank, false, scale), inFeatures);
        var rhs = new ConcatRows<TW, DenseOperand>(wT, new DenseOperand(b, rank, true), inFeatures);
        GemmTiles.Run(accelerator, lhs, rhs, new GemmEpilogue(y, outFeatures, 1f, 0f, bias), n, outFeatures, inFeatures + rank, path);
    }

    // w is op(B) = w [out, in]: the frozen weight read as stored.
    internal static void BackwardCore<TW>(Accelerator accelerator, TW w, FloatView dy, FloatView x, FloatView h, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, GemmPath path)
        where TW : struct, IGemmOperand
    {
        var mask = new GpuDropout(options.Dropout, options.Seed);

        // K = n sums: with n = 0 they write zeros (an empty sum), as the CPU kernel does.
        GemmTiles.Run(accelerator, new DenseOperand(dy, outFeatures, true), new DenseOperand(h, rank, false),
            new GemmEpilogue(db, rank, scale, 0f), outFeatures, rank, n, path);
        if (n == 0)
        {
            if (da.Length != 0)
            {
                da.MemSetToZero();
            }

            return;
        }

        using var dhBuffer = accelerator.Rent<float>((long)n * rank);
        var dh = dhBuffer.View;
        GemmTiles.Run(accelerator, new DenseOperand(dy, outFeatures, false), new DenseOperand(b, rank, false),
            new GemmEpilogue(dh, rank, scale, 0f), n, rank, outFeatures, path);
        if (da.Length != 0)
        {
            GemmTiles.Run(accelerator, new DenseOperand(dh, rank, true), new DenseOperand(x, inFeatures, false, 1f, mask),
                new GemmEpilogue(da, inFeatures, 1f, 0f), rank, inFeatures, n, path);
        }

        if (dx.Length != 0)
        {
            if (!mask.Active)
            {
                var lhs = new ConcatColumns<DenseOperand, DenseOperand>(new DenseOperand(dy, outFeatures, false), new DenseOperand(dh, rank, false), outFeatures);
                var rhs = new ConcatRows<TW, DenseOperand>(w, new DenseOperand(a, inFeatures, false), outFeatures);
                GemmTiles.Run(accelerator, lhs, rhs, new GemmEpilogue(dx, inFeatures, 1f, 0f), n, inFeatures, outFeatures + rank, path);
            }
            else
            {
                GemmTiles.Run(accelerator, new DenseOperand(dy, outFeatures, false), w, new GemmEpilogue(dx, inFeatures, 1f, 0f),
                    n, inFeatures, outFeatures, path);
                GemmTiles.Run(accelerator, new DenseOperand(dh, rank, false), new DenseOperand(a, inFeatures, false),
                    new GemmEpilogue(dx, inFeatures, 1f, 1f, mask: mask), n, inFeatures, rank, path);
            }
        }

    }

    internal static void ValidateForward(Accelerator accelerator, FloatView x, long w, FloatView bias, FloatView a, FloatView b, FloatView y, FloatView h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        GpuCheck.NotNull(accelerator);
        LoraMatmulShapes.Forward(x.Length, w, bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        FitInt(x.Length, w, y.Length);
    }

    internal static void ValidateBackward(Accelerator accelerator, FloatView dy, FloatView x, FloatView h, long w, FloatView a, FloatView b,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        GpuCheck.NotNull(accelerator);
        LoraMatmulShapes.Backward(dy.Length, x.Length, h.Length, w, a.Length, b.Length, dx.Length, da.Length, db.Length,
            n, inFeatures, outFeatures, rank, options);
        FitInt((long)n * inFeatures, w, dy.Length);
    }

    internal static void FitInt(long x, long w, long y)
    {
        GpuCheck.FitsInt(x, nameof(x));
        GpuCheck.FitsInt(w, nameof(w));
        GpuCheck.FitsInt(y, nameof(y));
    }
}
