// Segmented LoRA for training on the CPU: T adapters, adapter t on the contiguous rows of segment t,
// forward and backward (the inference-only SGMV is SegmentedLora). x [n, in], y [n, out]; segment t =
// rows [starts[t], starts[t + 1]) (m_t rows, possibly 0; rows after the last segment are untouched);
// adapter t: A_t [r_t, in], B_t [out, r_t] (PEFT layout), scale s_t, dropout seed seed_t:
//   u_t  = drop_t(x[seg t])              [m_t, in]   (mask index = element index inside the segment)
//   h_t  = u_t · A_tᵀ                    [m_t, r_t]  (kept for the backward)
//   y[seg t] += s_t · h_t · B_tᵀ         [m_t, out]
// Backward, g_t = dy[seg t] (chain rule through the two GEMMs and the mask):
//   dB_t       = s_t · g_tᵀ · h_t        [out, r_t]   } one pass over g_t (LowRankGrads) when both are
//   dh_t       = s_t · g_t · B_t         [m_t, r_t]   } wanted and the segment runs on one thread
//   dA_t       = dh_tᵀ · u_t             [r_t, in]
//   dx[seg t]  = drop_t'(dh_t · A_t)     [m_t, in]   (0 on rows outside every segment; or, accumulating,
//                                                    added to dx, other rows untouched: MixLoRA's gate and up
//                                                    LoRAs write one x̃ gradient)
// ForwardGather (SegmentedLoraTraining.Gather.cs) fills y with gathered rows of a source before the forward.
// Why: MixLoRA (one segment per expert over the k·n routed rows sorted by expert) used to gather each
// expert's rows and run one LoraBranch per expert and module, each with its own gathers, scatters and
// full-size gradient buffers. Here the rows of an expert are already contiguous: every GEMM reads and
// writes its segment of x, y, dy and dx in place (no gather, no scatter), the only scratch is dh (and
// u with dropout) from ArrayPool, and each segment does exactly what LoraBranch does on its gathered
// rows (the same fp32 Gemm calls in the same order) in the forward, so y equals the per-expert path bit for bit. The
// backward does too when dB is not wanted; with dB, a segment on one thread takes dB and dh from one pass over g_t
// (Kernels.Cpu.LowRankGrads), which sums in another order: equal within fp32 rounding.
// Threads: the segments are split over the threads (each segment's GEMMs on one thread), so a call
// forks and joins once, not once per small GEMM; a lone segment's GEMMs use all threads. Each segment
// writes only its own rows of y and dx and its own dA_t, dB_t: results do not depend on the split (but a lone
// segment on several threads takes dB and dh from the two threaded GEMMs: within rounding of the one-pass kernel).
using System.Buffers;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Segmented LoRA (one adapter per contiguous segment of rows) for training: forward with h, and backward, on the CPU.</summary>
public static unsafe partial class SegmentedLoraTraining
{
    /// <summary>y[seg t] += s_t·drop_t(x[seg t])·A_tᵀ·B_tᵀ for every segment t, and h (concatenated per segment: h_t at row starts[t], r_t columns, packed).</summary>
    /// <param name="x">Input [n, in].</param>
    /// <param name="starts">Segment starts [T + 1], non-decreasing, starts[0] ≥ 0, starts[T] ≤ n.</param>
    /// <param name="a">A_t [r_t, in] per segment.</param>
    /// <param name="b">B_t [out, r_t] per segment.</param>
    /// <param name="scales">s_t per segment.</param>
    /// <param name="seeds">Dropout seed per segment (read only when <paramref name="dropout"/> &gt; 0).</param>
    /// <param name="dropout">Dropout probability p in [0, 1), the same for every segment.</param>
    /// <param name="y">Output [n, out], accumulated into on the segments' rows.</param>
    /// <param name="h">Output: Σ_t m_t·r_t floats (<see cref="HLength"/>), segment t's h_t [m_t, r_t] at Σ_{u&lt;t} m_u·r_u.</param>
    /// <param name="n">Rows of x and y.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, the segments are out of order or outside [0, n], or p is outside [0, 1).</exception>
    public static void ForwardAccumulate(ReadOnlySpan<float> x, ReadOnlySpan<int> starts, IReadOnlyList<float[]> a, IReadOnlyList<float[]> b,
        ReadOnlySpan<float> scales, ReadOnlySpan<ulong> seeds, float dropout, Span<float> y, Span<float> h, int n, int inFeatures, int outFeatures,
        KernelOptions options = default)
    {
        var ranks = Check(x.Length, starts, a, b, scales.Length, seeds.Length, dropout, y.Length, n, inFeatures, outFeatures);
        fixed (float* px = x, py = y, ph = h)
        {
            Forward(px, starts, a, b, scales, seeds, dropout, py, ph, h.Length, ranks, null, null, n, inFeatures, outFeatures, options);
        }
    }

    /// <summary>
    /// The forward on y's segments; with <paramref name="source"/>, each segment first copies its rows y[i] = source[rows[i]] (on
    /// the thread that then runs the segment's GEMMs, so the rows are still in cache), and the rows outside every segment are
    /// copied here.
    /// </summary>
    private static void Forward(float* px, ReadOnlySpan<int> starts, IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, ReadOnlySpan<float> scales,
        ReadOnlySpan<ulong> seeds, float dropout, float* py, float* ph, long hSpan, int[] ranks, float* source, int[]? rows, int n, int inFeatures,
        int outFeatures, KernelOptions options)
    {
        long hLength = HLength(starts, ranks);
        if (hSpan != hLength)
        {
            throw new ArgumentException($"segmented LoRA: h has {hSpan} floats; the segments need {hLength} (Σ rows·rank).", "h");
        }

        var hAt = HOffsets(starts, ranks);
        var s = starts.ToArray();
        nint xp = (nint)px, yp = (nint)py, hp = (nint)ph, sp = (nint)source;
        if (rows != null)
        {
            CopyRows((float*)sp, rows, (float*)yp, 0, s[0], outFeatures);
            CopyRows((float*)sp, rows, (float*)yp, s[^1], n, outFeatures);
        }

        var seedArray = seeds.ToArray();
        var scaleArray = scales.ToArray();
        Segments(s, options, (t, kernel) =>
        {
            int m = s[t + 1] - s[t], r = ranks[t];
            if (rows != null)
            {
                CopyRows((float*)sp, rows, (float*)yp, s[t], s[t + 1], outFeatures);
            }

            var hs = new Span<float>((float*)hp + hAt[t], m * r);
            float[]? rented = null;
            var xs = new ReadOnlySpan<float>((float*)xp + ((long)s[t] * inFeatures), m * inFeatures);
            var u = Dropped(xs, dropout, dropout > 0 ? seedArray[t] : 0, kernel, ref rented);
            Gemm.Multiply(false, true, m, r, inFeatures, 1f, u, a[t], 0f, hs, kernel);
            Gemm.Multiply(false, true, m, outFeatures, r, scaleArray[t], hs, b[t], 1f, new Span<float>((float*)yp + ((long)s[t] * outFeatures), m * outFeatures), kernel);
            Return(rented);
        });
    }

    /// <summary>dx (overwritten: 0 outside the segments; skipped when empty), dA_t and dB_t per segment (overwritten; skipped when the list is null or an entry is null).</summary>
    /// <param name="dy">Gradient of y [n, out].</param>
    /// <param name="x">Input [n, in] (read only when some dA_t is wanted).</param>
    /// <param name="starts">The forward's segment starts.</param>
    /// <param name="h">The forward's h.</param>
    /// <param name="a">A_t per segment.</param>
    /// <param name="b">B_t per segment.</param>
    /// <param name="scales">s_t per segment.</param>
    /// <param name="seeds">Dropout seeds, as in the forward.</param>
    /// <param name="dropout">Dropout probability, as in the forward.</param>
    /// <param name="dx">Output [n, in], or empty to skip.</param>
    /// <param name="da">Output dA_t [r_t, in] per segment (null or null entries: skipped).</param>
    /// <param name="db">Output dB_t [out, r_t] per segment (null or null entries: skipped).</param>
    /// <param name="n">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <param name="accumulateDx">Add the segments' dx rows into <paramref name="dx"/> instead of overwriting it (rows outside every segment are then left as they are).</param>
    /// <exception cref="ArgumentException">As <see cref="ForwardAccumulate"/>, or an output's length is wrong.</exception>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<int> starts, ReadOnlySpan<float> h,
        IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, ReadOnlySpan<float> scales, ReadOnlySpan<ulong> seeds, float dropout,
        Span<float> dx, IReadOnlyList<float[]?>? da, IReadOnlyList<float[]?>? db, int n, int inFeatures, int outFeatures, KernelOptions options = default,
        bool accumulateDx = false)
    {
        var ranks = Check(x.Length, starts, a, b, scales.Length, seeds.Length, dropout, dy.Length, n, inFeatures, outFeatures);
        if (h.Length != HLength(starts, ranks))
        {
            throw new ArgumentException($"segmented LoRA backward: h has {h.Length} floats; the segments need {HLength(starts, ranks)}.", nameof(h));
        }

        if (dx.Length != 0 && dx.Length != (long)n * inFeatures)
        {
            throw new ArgumentException($"segmented LoRA backward: dx has {dx.Length} floats; [{n}, {inFeatures}] needs {(long)n * inFeatures}.", nameof(dx));
        }

        CheckOutputs(da, ranks, r => r * inFeatures, "dA");
        CheckOutputs(db, ranks, r => outFeatures * r, "dB");
        if (dx.Length != 0 && !accumulateDx)
        {
            dx[..(starts[0] * inFeatures)].Clear();
            dx[(starts[^1] * inFeatures)..].Clear();
        }

        for (int t = 0; t < ranks.Length; t++)
        {
            if (starts[t + 1] == starts[t])
            {
                da?[t]?.AsSpan().Clear();
                db?[t]?.AsSpan().Clear();
            }
        }

        var hAt = HOffsets(starts, ranks);
        var s = starts.ToArray();
        var seedArray = seeds.ToArray();
        var scaleArray = scales.ToArray();
        bool wantDx = dx.Length != 0;
        fixed (float* pg = dy, px = x, ph = h, pdx = dx)
        {
            nint gp = (nint)pg, xp = (nint)px, hp = (nint)ph, dxp = (nint)pdx;
            Segments(s, options, (t, kernel) =>
            {
                int m = s[t + 1] - s[t], r = ranks[t];
                float[]? dat = da?[t], dbt = db?[t];
                var hs = new ReadOnlySpan<float>((float*)hp + hAt[t], m * r);
                var g = new ReadOnlySpan<float>((float*)gp + ((long)s[t] * outFeatures), m * outFeatures);
                bool wantDh = wantDx || dat != null;
                if (dbt != null && !wantDh)
                {
                    Gemm.Multiply(true, false, outFeatures, r, m, scaleArray[t], g, hs, 0f, dbt, kernel);
                }

                if (!wantDh)
                {
                    return;
                }

                var dh = ArrayPool<float>.Shared.Rent(m * r);
                var dhs = dh.AsSpan(0, m * r);
                if (dbt != null && kernel.ResolveThreads() == 1)
                {
                    // One pass over the segment's g for both (see LowRankGrads); a lone segment on several threads keeps the GEMMs.
                    LowRankGrads.Compute(g, hs, b[t], scaleArray[t], dbt, dhs, m, outFeatures, r, kernel.Path);
                }
                else
                {
                    if (dbt != null)
                    {
                        Gemm.Multiply(true, false, outFeatures, r, m, scaleArray[t], g, hs, 0f, dbt, kernel);
                    }

                    Gemm.Multiply(false, false, m, r, outFeatures, scaleArray[t], g, b[t], 0f, dhs, kernel);
                }
                if (dat != null)
                {
                    float[]? rented = null;
                    var xs = new ReadOnlySpan<float>((float*)xp + ((long)s[t] * inFeatures), m * inFeatures);
                    var u = Dropped(xs, dropout, dropout > 0 ? seedArray[t] : 0, kernel, ref rented);
                    Gemm.Multiply(true, false, r, inFeatures, m, 1f, dhs, u, 0f, dat, kernel);
                    Return(rented);
                }

                if (wantDx)
                {
                    var dxs = new Span<float>((float*)dxp + ((long)s[t] * inFeatures), m * inFeatures);
                    if (dropout > 0 && accumulateDx)
                    {
                        // The mask applies to this segment's term only: dx += drop'(dh·A) through a scratch.
                        var term = ArrayPool<float>.Shared.Rent(m * inFeatures);
                        var terms = term.AsSpan(0, m * inFeatures);
                        Gemm.Multiply(false, false, m, inFeatures, r, 1f, dhs, a[t], 0f, terms, kernel);
                        Dropout.Apply(terms, terms, dropout, seedArray[t], kernel);
                        System.Numerics.Tensors.TensorPrimitives.Add(dxs, terms, dxs);
                        ArrayPool<float>.Shared.Return(term);
                    }
                    else
                    {
                        Gemm.Multiply(false, false, m, inFeatures, r, 1f, dhs, a[t], accumulateDx ? 1f : 0f, dxs, kernel);
                        if (dropout > 0)
                        {
                            Dropout.Apply(dxs, dxs, dropout, seedArray[t], kernel);
                        }
                    }
                }

                ArrayPool<float>.Shared.Return(dh);
            });
        }
    }

    /// <summary>
    /// Runs body(t, kernel) for every non-empty segment. With several threads and segments, the segments are split over the
    /// threads in contiguous runs of about equal rows and each runs its GEMMs on one thread (one fork-join per call instead
    /// of one per small GEMM); a lone segment runs its GEMMs on all threads.
    /// </summary>
    private static void Segments(int[] starts, KernelOptions options, Action<int, KernelOptions> body)
    {
        int count = starts.Length - 1, threads = options.Threads == 0 ? Environment.ProcessorCount : options.Threads;
        int used = 0;
        for (int t = 0; t < count; t++)
        {
            used += starts[t + 1] > starts[t] ? 1 : 0;
        }

        int parts = Math.Min(threads, used);
        if (parts <= 1)
        {
            for (int t = 0; t < count; t++)
            {
                if (starts[t + 1] > starts[t])
                {
                    body(t, options);
                }
            }

            return;
        }

        var single = options with { Threads = 1 };
        long first = starts[0], total = starts[count] - first;
        CpuParallel.For(parts, parts, part =>
        {
            for (int t = 0; t < count; t++)
            {
                // Segment t belongs to the part its middle row falls in.
                long mid = ((long)starts[t] + starts[t + 1] - (2 * first)) / 2;
                if (starts[t + 1] > starts[t] && Math.Min(mid * parts / total, parts - 1) == part)
                {
                    body(t, single);
                }
            }
        });
    }

    private static long[] HOffsets(ReadOnlySpan<int> starts, int[] ranks)
    {
        var offsets = new long[ranks.Length];
        for (int t = 1; t < ranks.Length; t++)
        {
            offsets[t] = offsets[t - 1] + ((long)(starts[t] - starts[t - 1]) * ranks[t - 1]);
        }

        return offsets;
    }

    /// <summary>Σ_t m_t·r_t: the length of h.</summary>
    public static long HLength(ReadOnlySpan<int> starts, ReadOnlySpan<int> ranks)
    {
        long total = 0;
        for (int t = 0; t < ranks.Length; t++)
        {
            total += (long)(starts[t + 1] - starts[t]) * ranks[t];
        }

        return total;
    }

    /// <summary>The checked rank of each segment's adapter (A_t.Length / in, with B_t [out, r_t]).</summary>
    private static int[] Check(long xLength, ReadOnlySpan<int> starts, IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, int scales, int seeds,
        float dropout, long yLength, int n, int inFeatures, int outFeatures)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (n < 0 || inFeatures <= 0 || outFeatures <= 0)
        {
            throw new ArgumentException($"segmented LoRA: n = {n}, in = {inFeatures}, out = {outFeatures} (need n ≥ 0 and positive features).", nameof(n));
        }

        int count = starts.Length - 1;
        if (count < 0 || a.Count != count || b.Count != count || scales != count || (dropout > 0 && seeds != count))
        {
            throw new ArgumentException($"segmented LoRA: {starts.Length} segment starts need {Math.Max(count, 0)} A, B, scales (and seeds with dropout); got {a.Count}, {b.Count}, {scales}, {seeds}.", nameof(starts));
        }

        if (xLength != (long)n * inFeatures || yLength != (long)n * outFeatures)
        {
            throw new ArgumentException($"segmented LoRA: x has {xLength} floats and y (or dy) {yLength}; [{n}, {inFeatures}] and [{n}, {outFeatures}] need {(long)n * inFeatures} and {(long)n * outFeatures}.", nameof(n));
        }

        if (!(dropout >= 0 && dropout < 1))
        {
            throw new ArgumentException($"segmented LoRA: dropout {dropout} is outside [0, 1).", nameof(dropout));
        }

        var ranks = new int[count];
        for (int t = 0; t <= count; t++)
        {
            if (starts[t] < 0 || starts[t] > n || (t > 0 && starts[t] < starts[t - 1]))
            {
                throw new ArgumentException($"segmented LoRA: segment start {t} = {starts[t]} is outside [0, {n}] or before the previous start.", nameof(starts));
            }

            if (t == count)
            {
                break;
            }

            int r = a[t].Length / inFeatures;
            if (r <= 0 || a[t].Length != r * inFeatures || b[t].Length != outFeatures * r)
            {
                throw new ArgumentException($"segmented LoRA: adapter {t} has A of {a[t].Length} and B of {b[t].Length} floats; need A [r, {inFeatures}] and B [{outFeatures}, r] with r ≥ 1.", nameof(a));
            }

            ranks[t] = r;
        }

        return ranks;
    }

    private static void CheckOutputs(IReadOnlyList<float[]?>? outputs, int[] ranks, Func<int, int> length, string name)
    {
        if (outputs == null)
        {
            return;
        }

        if (outputs.Count != ranks.Length)
        {
            throw new ArgumentException($"segmented LoRA backward: {outputs.Count} {name} outputs for {ranks.Length} segments.", name);
        }

        for (int t = 0; t < ranks.Length; t++)
        {
            if (outputs[t] is { } o && o.Length != length(ranks[t]))
            {
                throw new ArgumentException($"segmented LoRA backward: {name}[{t}] has {o.Length} floats; rank {ranks[t]} needs {length(ranks[t])}.", name);
            }
        }
    }

    /// <summary>drop(xs) (x itself when p = 0; else a rented buffer the caller returns).</summary>
    private static ReadOnlySpan<float> Dropped(ReadOnlySpan<float> xs, float p, ulong seed, KernelOptions options, ref float[]? rented)
    {
        if (p <= 0)
        {
            return xs;
        }

        rented = ArrayPool<float>.Shared.Rent(xs.Length);
        var u = rented.AsSpan(0, xs.Length);
        Dropout.Apply(xs, u, p, seed, options);
        return u;
    }

    private static void Return(float[]? rented)
    {
        if (rented != null)
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }
}
