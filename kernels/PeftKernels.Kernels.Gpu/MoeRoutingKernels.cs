// Token routing of a mixture of experts on the GPU (MoeRouting.cs on the CPU; MixLoRA, docs/formats/mixlora.md#routing;
// specification Kernels.Reference.MoeRoutingReference). Rows are tokens:
//   softmax     p = softmax(z) per row of z [n, E];  dz = p ⊙ (g − <g, p>)
//   top-k       sel = the k largest p per row (ties: lower expert first), w = p[sel] / Σ p[sel]   [n, k]
//               dp[sel_j] = (g_j − <g, w>) / Σ p[sel]  (0 for the experts not chosen)
//   routed sum  y[rows[i], :] += w[rows[i], slots[i]] · part[i, :]   (one expert's part; called per expert)
//               dpart[i, :] = w·g[rows[i], :],  dw[rows[i], slots[i]] += <part[i, :], g[rows[i], :]>
//   load balancing  S[e] = Σ_t p[t, e] (the expert probability sums; the loss is formed on the host from them and the
//               choice counts); backward dp[t, e] = g·f[e]
//   scale elements  y = x ⊙ f (the router's jitter noise);  dx = g ⊙ f
// One thread per row for the row-wise routing (E experts, a handful: the top-k is the CPU's insertion into the
// sorted prefix, written straight into sel), one thread per element for the routed sum (an expert's rows are distinct
// tokens, so no two threads of one launch touch one y element; experts run one launch after another), one per
// routed row for dw. No atomics; the expert sums are deterministic column sums (ColumnSumsKernels).
namespace PeftKernels.Kernels.Gpu;

/// <summary>MoE routing (softmax, top-k, routed sum, load-balancing sums, jitter) on an ILGPU accelerator.</summary>
public static class MoeRoutingKernels
{
    /// <summary>p = softmax(z) per row; z and p [n, e]. Enqueues only.</summary>
    public static void Softmax(Accelerator accelerator, FloatView z, FloatView p, int n, int e)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.Softmax(z.Length, p.Length, n, e);
        GpuCheck.FitsInt(z.Length, nameof(z));
        if (n != 0 && e != 0)
        {
            Loaded.For(accelerator).Softmax(n, z, p, e);
        }
    }

    /// <summary>dz = p ⊙ (g − &lt;g, p&gt;) per row (overwritten). Enqueues only.</summary>
    public static void SoftmaxBackward(Accelerator accelerator, FloatView g, FloatView p, FloatView dz, int n, int e)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.SoftmaxBackward(g.Length, p.Length, dz.Length, n, e);
        GpuCheck.FitsInt(g.Length, nameof(g));
        if (n != 0 && e != 0)
        {
            Loaded.For(accelerator).SoftmaxBackward(n, g, p, dz, e);
        }
    }

    /// <summary>The k largest probabilities of each row of p [n, e] into sel [n, k] (ties: lower expert first), their renormalised values into w [n, k]. Enqueues only.</summary>
    public static void TopK(Accelerator accelerator, FloatView p, IntView sel, FloatView w, int n, int e, int k)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.TopK(p.Length, sel.Length, w.Length, n, e, k);
        GpuCheck.FitsInt(p.Length, nameof(p));
        if (n != 0)
        {
            Loaded.For(accelerator).TopK(n, p, sel, w, e, k);
        }
    }

    /// <summary>dp [n, e] (overwritten) from g = dL/dw [n, k] through the renormalisation of <see cref="TopK"/>. Enqueues only.</summary>
    public static void TopKBackward(Accelerator accelerator, FloatView g, FloatView p, IntView sel, FloatView w, FloatView dp, int n, int e, int k)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.TopKBackward(g.Length, p.Length, sel.Length, w.Length, dp.Length, n, e, k);
        GpuCheck.FitsInt(p.Length, nameof(p));
        if (n != 0)
        {
            Loaded.For(accelerator).TopKBackward(n, g, p, sel, w, dp, e, k);
        }
    }

    /// <summary>
    /// y[rows[i], :] += w[rows[i]·k + slots[i]]·part[i, :] (one expert's share; y [n, c] accumulates). The rows (distinct) and slots
    /// are checked on the host before upload (MoeRoutingShapes.Routes). Enqueues only.
    /// </summary>
    public static void RoutedSum(Accelerator accelerator, FloatView part, IntView rows, IntView slots, FloatView w, FloatView y, int n, int c, int k)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(rows.Length, nameof(rows));
        GpuCheck.FitsInt(slots.Length, nameof(slots));
        MoeRoutingShapes.RoutedSum(part.Length, (int)rows.Length, (int)slots.Length, w.Length, y.Length, n, c, k);
        GpuCheck.FitsInt(part.Length, nameof(part));
        if (part.Length != 0)
        {
            Loaded.For(accelerator).RoutedSum((int)part.Length, part, rows, slots, w, y, c, k);
        }
    }

    /// <summary>
    /// Backward of one expert's <see cref="RoutedSum"/>: dpart[i, :] = w·g[rows[i], :] (overwritten, when not empty) and
    /// dw[rows[i]·k + slots[i]] += &lt;part[i, :], g[rows[i], :]&gt; (when dw is not empty). Enqueues only.
    /// </summary>
    public static void RoutedSumBackward(Accelerator accelerator, FloatView g, FloatView part, IntView rows, IntView slots, FloatView w,
        FloatView dpart, FloatView dw, int n, int c, int k)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(rows.Length, nameof(rows));
        MoeRoutingShapes.RoutedSumBackward(g.Length, part.Length, (int)rows.Length, dpart.Length, dw.Length, n, c, k);
        Check.Length("slots", slots.Length, rows.Length, "rows.Length");
        GpuCheck.FitsInt(g.Length, nameof(g));
        var loaded = Loaded.For(accelerator);
        if (dpart.Length != 0)
        {
            loaded.RoutedGrad((int)dpart.Length, g, rows, slots, w, dpart, c, k);
        }

        if (dw.Length != 0 && rows.Length != 0)
        {
            loaded.RoutedDots((int)rows.Length, g, part, rows, slots, dw, c, k);
        }
    }

    /// <summary>sums[e] = Σ_t p[t, e] for p [n, E] (overwritten; deterministic column sums). Enqueues only.</summary>
    public static void ExpertSums(Accelerator accelerator, FloatView p, FloatView sums, int n, int e)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.ExpertSums(p.Length, sums.Length, n, e);
        GpuCheck.FitsInt(p.Length, nameof(p));
        ColumnSumsKernels.Run(accelerator, new ColumnSumsKernels.RowTerm(p, e), sums, n, e);
    }

    /// <summary>dp[t, e] = g·f[e] for every token t (overwritten; the load-balancing loss's gradient). Enqueues only.</summary>
    public static void ExpertBroadcast(Accelerator accelerator, FloatView f, float g, FloatView dp, int n, int e)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.ExpertBroadcast(f.Length, dp.Length, n, e);
        GpuCheck.FitsInt(dp.Length, nameof(dp));
        if (dp.Length != 0)
        {
            Loaded.For(accelerator).Broadcast((int)dp.Length, f, dp, g, e);
        }
    }

    /// <summary>y = x ⊙ f, element-wise (also the backward, with g for x). Enqueues only.</summary>
    public static void ScaleElements(Accelerator accelerator, FloatView x, FloatView f, FloatView y)
    {
        GpuCheck.NotNull(accelerator);
        MoeRoutingShapes.ScaleElements(x.Length, f.Length, y.Length);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (x.Length != 0)
        {
            Loaded.For(accelerator).Multiply((int)x.Length, x, f, y);
        }
    }

    /// <summary>
    /// The host check of one expert's rows and slots that <see cref="RoutedSum"/> does not make (it never downloads them): one
    /// slot per row, each (row, slot) in [0, n) × [0, k) (the CPU kernel's message), and the rows distinct (a token chooses an
    /// expert once; the launch writes each row from one thread). Call it before uploading them.
    /// </summary>
    public static void CheckRoutes(ReadOnlySpan<int> rows, ReadOnlySpan<int> slots, int n, int k)
    {
        MoeRoutingShapes.Routes(rows, slots, n, k);
        var seen = new HashSet<int>();
        foreach (int row in rows)
        {
            Check.Require(seen.Add(row), nameof(rows), $"routed sum on a GPU: row {row} appears twice in one expert's rows; a token chooses an expert at most once.");
        }
    }

    internal static void SoftmaxKernel(Index1D t, FloatView z, FloatView p, int e)
    {
        int at = t * e;
        float max = float.NegativeInfinity;
        for (int j = 0; j < e; j++)
        {
            max = MathF.Max(max, z[at + j]);
        }

        float sum = 0f;
        for (int j = 0; j < e; j++)
        {
            float v = MathF.Exp(z[at + j] - max);
            p[at + j] = v;
            sum += v;
        }

        for (int j = 0; j < e; j++)
        {
            p[at + j] /= sum;
        }
    }

    internal static void SoftmaxBackwardKernel(Index1D t, FloatView g, FloatView p, FloatView dz, int e)
    {
        int at = t * e;
        float dot = 0f;
        for (int j = 0; j < e; j++)
        {
            dot += g[at + j] * p[at + j];
        }

        for (int j = 0; j < e; j++)
        {
            dz[at + j] = (g[at + j] - dot) * p[at + j];
        }
    }

    internal static void TopKKernel(Index1D t, FloatView p, IntView sel, FloatView w, int e, int k)
    {
        int row = t * e, s = t * k, count = 0;
        for (int j = 0; j < e; j++)
        {
            // Insertion into the sorted prefix: strictly greater moves ahead, so equal values keep the lower index first.
            int at = count;
            while (at > 0 && p[row + j] > p[row + sel[s + at - 1]])
            {
                at--;
            }

            if (at >= k)
            {
                continue;
            }

            for (int m = Math.Min(count, k - 1); m > at; m--)
            {
                sel[s + m] = sel[s + m - 1];
            }

            sel[s + at] = j;
            count = Math.Min(count + 1, k);
        }

        float sum = 0f;
        for (int j = 0; j < k; j++)
        {
            sum += p[row + sel[s + j]];
        }

        for (int j = 0; j < k; j++)
        {
            w[s + j] = p[row + sel[s + j]] / sum;
        }
    }

    internal static void TopKBackwardKernel(Index1D t, FloatView g, FloatView p, IntView sel, FloatView w, FloatView dp, int e, int k)
    {
        int row = t * e, s = t * k;
        float sum = 0f, dot = 0f;
        for (int j = 0; j < e; j++)
        {
            dp[row + j] = 0f;
        }

        for (int j = 0; j < k; j++)
        {
            sum += p[row + sel[s + j]];
            dot += g[s + j] * w[s + j];
        }

        for (int j = 0; j < k; j++)
        {
            dp[row + sel[s + j]] = (g[s + j] - dot) / sum;
        }
    }

    internal static void RoutedSumKernel(Index1D idx, FloatView part, IntView rows, IntView slots, FloatView w, FloatView y, int c, int k)
    {
        int i = idx / c, col = idx - (i * c);
        int at = (rows[i] * c) + col;
        y[at] += part[idx] * w[(rows[i] * k) + slots[i]];
    }

    internal static void RoutedGradKernel(Index1D idx, FloatView g, IntView rows, IntView slots, FloatView w, FloatView dpart, int c, int k)
    {
        int i = idx / c, col = idx - (i * c);
        dpart[idx] = g[(rows[i] * c) + col] * w[(rows[i] * k) + slots[i]];
    }

    internal static void RoutedDotsKernel(Index1D i, FloatView g, FloatView part, IntView rows, IntView slots, FloatView dw, int c, int k)
    {
        int row = rows[i];
        float sum = 0f;
        for (int col = 0; col < c; col++)
        {
            sum += part[(i * c) + col] * g[(row * c) + col];
        }

        dw[(row * k) + slots[i]] += sum;
    }

    internal static void BroadcastKernel(Index1D i, FloatView f, FloatView dp, float g, int e) => dp[i] = f[i % e] * g;

    internal static void MultiplyKernel(Index1D i, FloatView x, FloatView f, FloatView y) => y[i] = x[i] * f[i];

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, int> Softmax;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int> SoftmaxBackward;
        public readonly Action<Index1D, FloatView, IntView, FloatView, int, int> TopK;
        public readonly Action<Index1D, FloatView, FloatView, IntView, FloatView, FloatView, int, int> TopKBackward;
        public readonly Action<Index1D, FloatView, IntView, IntView, FloatView, FloatView, int, int> RoutedSum;
        public readonly Action<Index1D, FloatView, IntView, IntView, FloatView, FloatView, int, int> RoutedGrad;
        public readonly Action<Index1D, FloatView, FloatView, IntView, IntView, FloatView, int, int> RoutedDots;
        public readonly Action<Index1D, FloatView, FloatView, float, int> Broadcast;
        public readonly Action<Index1D, FloatView, FloatView, FloatView> Multiply;

        private Loaded(Accelerator a)
        {
            Softmax = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int>(SoftmaxKernel);
            SoftmaxBackward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int>(SoftmaxBackwardKernel);
            TopK = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int, int>(TopKKernel);
            TopKBackward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, IntView, FloatView, FloatView, int, int>(TopKBackwardKernel);
            RoutedSum = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, IntView, FloatView, FloatView, int, int>(RoutedSumKernel);
            RoutedGrad = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, IntView, FloatView, FloatView, int, int>(RoutedGradKernel);
            RoutedDots = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, IntView, IntView, FloatView, int, int>(RoutedDotsKernel);
            Broadcast = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, float, int>(BroadcastKernel);
            Multiply = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView>(MultiplyKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
