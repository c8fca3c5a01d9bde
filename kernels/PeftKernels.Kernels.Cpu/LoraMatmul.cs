// Fused LoRA linear (W frozen). Shapes, row-major: x [n, in], w [out, in], bias [out] or
// empty, a [r, in], b [out, r], h [n, r], y [n, out]; s = scale; drop() is the seeded
// dropout of the LoRA branch (DropoutMask), regenerated in backward, never stored.
//
// Forward (two GEMMs, the second is the one-GEMM fusion of docs/formats/methods.md#fused-lora-matmul):
//   h = drop(x) · aᵀ                                (skinny: K = in, N = r)
//   y = [x | s·h] · [w | b]ᵀ + bias                 (one GEMM, K = in + r; y written once)
// Backward, g = dL/dy (chain rule through y = x·wᵀ + s·h·bᵀ, h = drop(x)·aᵀ):
//   dh = s · g · b          [n, r]
//   db = s · gᵀ · h         [out, r]
//   da = dhᵀ · drop(x)      [r, in]       (skipped when da is empty: LoRA-FA)
//   dx = [g | dh] · [w ; a] [n, in]       (one pass over dx tiles, K = out + r; with dropout
//                                           the K ≥ out blocks are masked and scaled by 1/(1−p))
// In fp32 compute dh and db come from one threaded pass over g and da from x's rows as they lie
// (LowRankGrads: the GEMMs would pack g twice and x once for N or M = r); bf16 compute keeps the
// GEMMs (operands in bf16 pairs), and so does da under dropout (the mask rides on the GEMM's packing).
// bf16 compute: w's K blocks end where the LoRA factor's begin (K = in, resp. out), so that the
// packed bf16 panels of a frozen w can be kept across calls (WeightPanelCache, when the operand
// carries one and KernelOptions.NoWeightPanelCache is false).
namespace PeftKernels.Kernels.Cpu;

/// <summary>Fused LoRA matmul forward and backward on the CPU, one entry point per direction over any storage of the frozen weight.</summary>
public static unsafe class LoraMatmul
{
    /// <summary>y = x·wᵀ + bias + scale·(drop(x)·aᵀ)·bᵀ and h = drop(x)·aᵀ (kept for backward), over any storage of w.</summary>
    /// <param name="x">Input [n, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures]: fp32, bf16 and fp16 are widened in registers or while packing; 4-bit runs QLoraMatmul's body.</param>
    /// <param name="bias">Bias [outFeatures], or empty.</param>
    /// <param name="a">LoRA A [rank, inFeatures].</param>
    /// <param name="b">LoRA B [outFeatures, rank].</param>
    /// <param name="scale">LoRA scale s.</param>
    /// <param name="y">Output [n, outFeatures].</param>
    /// <param name="h">Output [n, rank]: drop(x)·aᵀ, needed by Backward.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout of the LoRA branch, its seed, threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length or w's shape differs from what the dims imply, a dim is out of range, or the dropout is not in [0, 1).</exception>
    public static void Forward(ReadOnlySpan<float> x, in WeightOperand w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default)
    {
        if (w.Storage == WeightFormat.Q4)
        {
            QLoraMatmul.Forward(x, w.Quantized, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options);
            return;
        }

        LoraMatmulShapes.Forward(x.Length, CountOf(w), bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        w.CheckShape(inFeatures, outFeatures);
        var kept = new WeightPanels(WeightPanels.Of(w, options.Kernel), WeightPanelLayout.Transposed, inFeatures);
        switch (w.Storage)
        {
            case WeightFormat.F32:
                fixed (float* pw = w.F32Span)
                {
                    ForwardCore(new DenseB(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
            case WeightFormat.BF16:
                fixed (ushort* pw = w.Bf16Span)
                {
                    ForwardCore(new Bf16B(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
            default:
                fixed (Half* pw = w.F16Span)
                {
                    ForwardCore(new F16B(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
        }
    }

    /// <summary>dx (skipped when empty), da (skipped when empty: LoRA-FA) and db, with w frozen, over any storage of w; the same dropout and seed as the forward.</summary>
    /// <param name="dy">Gradient of y [n, outFeatures].</param>
    /// <param name="x">Input [n, inFeatures]; may be empty when da is empty (LoRA-FA keeps only h).</param>
    /// <param name="h">The forward's h [n, rank].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures], any storage.</param>
    /// <param name="a">LoRA A [rank, inFeatures].</param>
    /// <param name="b">LoRA B [outFeatures, rank].</param>
    /// <param name="scale">LoRA scale s.</param>
    /// <param name="dx">Output [n, inFeatures], or empty to skip.</param>
    /// <param name="da">Output [rank, inFeatures], or empty to skip (LoRA-FA).</param>
    /// <param name="db">Output [outFeatures, rank].</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout and seed, as in the forward; threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length or w's shape differs from what the dims imply, a dim is out of range, or the dropout is not in [0, 1).</exception>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        in WeightOperand w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank,
        in LoraOptions options = default)
    {
        if (w.Storage == WeightFormat.Q4)
        {
            QLoraMatmul.Backward(dy, x, h, w.Quantized, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options);
            return;
        }

        LoraMatmulShapes.Backward(dy.Length, x.Length, h.Length, CountOf(w), a.Length, b.Length, dx.Length, da.Length, db.Length, n, inFeatures, outFeatures, rank, options);
        w.CheckShape(inFeatures, outFeatures);
        var kept = new WeightPanels(WeightPanels.Of(w, options.Kernel), WeightPanelLayout.Rows, outFeatures);
        switch (w.Storage)
        {
            case WeightFormat.F32:
                fixed (float* pw = w.F32Span)
                {
                    BackwardCore(new DenseB(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
            case WeightFormat.BF16:
                fixed (ushort* pw = w.Bf16Span)
                {
                    BackwardCore(new Bf16B(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
            default:
                fixed (Half* pw = w.F16Span)
                {
                    BackwardCore(new F16B(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options, kept);
                }

                break;
        }
    }

    private static int CountOf(in WeightOperand w) => (int)Math.Min(w.Count, int.MaxValue);

    internal static void ForwardCore<TW>(TW wT, ReadOnlySpan<float> x, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, in WeightPanels weight = default)
        where TW : struct, IPanelB
    {
        if (n == 0)
        {
            return;
        }

        var path = options.Kernel.ResolvePath();
        int threads = options.Kernel.ResolveThreads();
        var mask = new DropoutMask(options.Dropout, options.Seed);
        fixed (float* px = x, pbias = bias, pa = a, pb = b, py = y, ph = h)
        {
            GemmDriver.Run(options.Kernel, path, threads, new DenseA(px, inFeatures, false, 1f, mask), new DenseB(pa, inFeatures, true, inFeatures),
                n, rank, inFeatures, 1f, 0f, ph, rank, null);
            var lhs = new ConcatA<DenseA, DenseA>(new DenseA(px, inFeatures, false), new DenseA(ph, rank, false, scale), inFeatures);
            var rhs = new ConcatB<TW, DenseB>(wT, new DenseB(pb, rank, true, rank), inFeatures);
            GemmDriver.Run(options.Kernel, path, threads, lhs, rhs, n, outFeatures, inFeatures + rank, 1f, 0f, py, outFeatures,
                bias.Length == 0 ? null : pbias, default, weight);
        }
    }

    internal static void BackwardCore<TW>(TW w, ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> dx, Span<float> da, Span<float> db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options, in WeightPanels weight = default)
        where TW : struct, IPanelB
    {
        var path = options.Kernel.ResolvePath();
        int threads = options.Kernel.ResolveThreads();
        if (n == 0)
        {
            // No tokens: every gradient is an empty sum.
            dx.Clear();
            da.Clear();
            db.Clear();
            return;
        }

        var mask = new DropoutMask(options.Dropout, options.Seed);
        var dh = new float[n * rank];
        bool fp32 = options.Kernel.Compute == ComputePrecision.Fp32;
        if (fp32)
        {
            // fp32: dh and db in one threaded pass over dy, da straight from x's rows (LowRankGrads; no packing).
            LowRankGrads.Compute(dy, h, b, scale, db, dh, n, outFeatures, rank, options.Kernel);
        }

        fixed (float* pdy = dy, px = x, ph = h, pa = a, pb = b, pdx = dx, pda = da, pdb = db, pdh = dh)
        {
            if (!fp32)
            {
                GemmDriver.Run(options.Kernel, path, threads, new DenseA(pdy, outFeatures, false), new DenseB(pb, rank, false, outFeatures),
                    n, rank, outFeatures, scale, 0f, pdh, rank, null);
                GemmDriver.Run(options.Kernel, path, threads, new DenseA(pdy, outFeatures, true), new DenseB(ph, rank, false, n),
                    outFeatures, rank, n, scale, 0f, pdb, rank, null);
            }

            if (da.Length != 0 && fp32 && !mask.Active)
            {
                LowRankGrads.ComputeA(dh, x, da, n, inFeatures, rank, options.Kernel);
            }
            else if (da.Length != 0)
            {
                GemmDriver.Run(options.Kernel, path, threads, new DenseA(pdh, rank, true), new DenseB(px, inFeatures, false, n, mask),
                    rank, inFeatures, n, 1f, 0f, pda, inFeatures, null);
            }

            if (dx.Length != 0)
            {
                var lhs = new ConcatA<DenseA, DenseA>(new DenseA(pdy, outFeatures, false), new DenseA(pdh, rank, false), outFeatures);
                var rhs = new ConcatB<TW, DenseB>(w, new DenseB(pa, inFeatures, false, rank), outFeatures);
                GemmDriver.Run(options.Kernel, path, threads, lhs, rhs, n, inFeatures, outFeatures + rank, 1f, 0f, pdx, inFeatures, null,
                    new GemmEpilogue(outFeatures, mask, inFeatures), weight);
            }
        }
    }
}
