// Fused LoRA linear (W frozen). Shapes, row-major: x [n, in], w [out, in], bias [out] or
// empty, a [r, in], b [out, r], h [n, r], y [n, out]; s = scale; drop() is the seeded
// dropout of the LoRA branch (DropoutMask), regenerated in backward, never stored.
//
// Forward (two GEMMs, the second is the one-GEMM fusion of peft-math.md):
//   h = drop(x) · aᵀ                                (skinny: K = in, N = r)
//   y = [x | s·h] · [w | b]ᵀ + bias                 (one GEMM, K = in + r; y written once)
// Backward, g = dL/dy (chain rule through y = x·wᵀ + s·h·bᵀ, h = drop(x)·aᵀ):
//   dh = s · g · b          [n, r]
//   db = s · gᵀ · h         [out, r]
//   da = dhᵀ · drop(x)      [r, in]       (skipped when da is empty: LoRA-FA)
//   dx = [g | dh] · [w ; a] [n, in]       (one pass over dx tiles, K = out + r; with dropout
//                                           the K ≥ out blocks are masked and scaled by 1/(1−p))
namespace PeftKernels.Kernels.Cpu;

/// <summary>Fused LoRA matmul forward and backward on the CPU.</summary>
public static unsafe class LoraMatmul
{
    /// <summary>y = x·wᵀ + bias + scale·(x·aᵀ)·bᵀ and h = x·aᵀ (kept for backward).</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank) =>
        Forward(x, w, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, default);

    /// <summary>Forward with dropout and execution options.</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulShapes.Forward(x.Length, w.Length, bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        fixed (float* pw = w)
        {
            ForwardCore(new DenseB(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>Forward with a bf16 base weight (bit patterns), widened in registers.</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<ushort> w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank) =>
        Forward(x, w, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, default);

    /// <summary>Forward with a bf16 base weight, dropout and execution options.</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<ushort> w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulShapes.Forward(x.Length, w.Length, bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        fixed (ushort* pw = w)
        {
            ForwardCore(new Bf16B(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>Forward with an fp16 base weight (widened while packing), dropout and execution options.</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<Half> w, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default)
    {
        LoraMatmulShapes.Forward(x.Length, w.Length, bias.Length, a.Length, b.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        fixed (Half* pw = w)
        {
            ForwardCore(new F16B(pw, inFeatures, true, inFeatures), x, bias, a, b, scale, y, h, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>Backward with an fp16 base weight, dropout and execution options.</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<Half> w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank,
        in LoraOptions options = default)
    {
        LoraMatmulShapes.Backward(dy.Length, x.Length, h.Length, w.Length, a.Length, b.Length, dx.Length, da.Length, db.Length, n, inFeatures, outFeatures, rank, options);
        fixed (Half* pw = w)
        {
            BackwardCore(new F16B(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>dx (skipped when empty), da (skipped when empty: LoRA-FA) and db, with w frozen.</summary>
    /// <remarks><paramref name="x"/> may be empty when <paramref name="da"/> is empty (LoRA-FA keeps only h).</remarks>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<float> w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank) =>
        Backward(dy, x, h, w, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, default);

    /// <summary>Backward with dropout and execution options (same dropout and seed as the forward).</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<float> w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank,
        in LoraOptions options)
    {
        LoraMatmulShapes.Backward(dy.Length, x.Length, h.Length, w.Length, a.Length, b.Length, dx.Length, da.Length, db.Length, n, inFeatures, outFeatures, rank, options);
        fixed (float* pw = w)
        {
            BackwardCore(new DenseB(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options);
        }
    }

    /// <summary>Backward with a bf16 base weight (bit patterns).</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<ushort> w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank) =>
        Backward(dy, x, h, w, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, default);

    /// <summary>Backward with a bf16 base weight, dropout and execution options.</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<ushort> w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale,
        Span<float> dx, Span<float> da, Span<float> db, int n, int inFeatures, int outFeatures, int rank,
        in LoraOptions options)
    {
        LoraMatmulShapes.Backward(dy.Length, x.Length, h.Length, w.Length, a.Length, b.Length, dx.Length, da.Length, db.Length, n, inFeatures, outFeatures, rank, options);
        fixed (ushort* pw = w)
        {
            BackwardCore(new Bf16B(pw, inFeatures, false, outFeatures), dy, x, h, a, b, scale, dx, da, db, n, inFeatures, outFeatures, rank, options);
        }
    }

    internal static void ForwardCore<TW>(TW wT, ReadOnlySpan<float> x, ReadOnlySpan<float> bias,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
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
            GemmDriver.Run(path, threads, new DenseA(px, inFeatures, false, 1f, mask), new DenseB(pa, inFeatures, true, inFeatures),
                n, rank, inFeatures, 1f, 0f, ph, rank, null);
            var lhs = new ConcatA<DenseA, DenseA>(new DenseA(px, inFeatures, false), new DenseA(ph, rank, false, scale), inFeatures);
            var rhs = new ConcatB<TW, DenseB>(wT, new DenseB(pb, rank, true, rank), inFeatures);
            GemmDriver.Run(path, threads, lhs, rhs, n, outFeatures, inFeatures + rank, 1f, 0f, py, outFeatures,
                bias.Length == 0 ? null : pbias);
        }
    }

    internal static void BackwardCore<TW>(TW w, ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> h,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> dx, Span<float> da, Span<float> db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
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
        fixed (float* pdy = dy, px = x, ph = h, pa = a, pb = b, pdx = dx, pda = da, pdb = db, pdh = dh)
        {
            GemmDriver.Run(path, threads, new DenseA(pdy, outFeatures, false), new DenseB(pb, rank, false, outFeatures),
                n, rank, outFeatures, scale, 0f, pdh, rank, null);
            GemmDriver.Run(path, threads, new DenseA(pdy, outFeatures, true), new DenseB(ph, rank, false, n),
                outFeatures, rank, n, scale, 0f, pdb, rank, null);
            if (da.Length != 0)
            {
                GemmDriver.Run(path, threads, new DenseA(pdh, rank, true), new DenseB(px, inFeatures, false, n, mask),
                    rank, inFeatures, n, 1f, 0f, pda, inFeatures, null);
            }

            if (dx.Length != 0)
            {
                var lhs = new ConcatA<DenseA, DenseA>(new DenseA(pdy, outFeatures, false), new DenseA(pdh, rank, false), outFeatures);
                var rhs = new ConcatB<TW, DenseB>(w, new DenseB(pa, inFeatures, false, rank), outFeatures);
                GemmDriver.Run(path, threads, lhs, rhs, n, inFeatures, outFeatures + rank, 1f, 0f, pdx, inFeatures, null,
                    new GemmEpilogue(outFeatures, mask, inFeatures));
            }
        }
    }
}
