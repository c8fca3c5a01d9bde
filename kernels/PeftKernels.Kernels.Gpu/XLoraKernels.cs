// X-LoRA's ops on the GPU (the host bodies are in Ops/XLora.cs; specification Kernels.Reference.XLoraReference;
// docs/formats/xlora.md):
//   ScaleRows    y[i, :] = s[i, k]·x[i, :]   x, y [n, d], s [n, c], one column k
//                dx[i, :] = s[i, k]·g[i, :];  ds[i, k] = Σ_j g[i, j]·x[i, j], ds 0 in the other columns (chain rule:
//                y is linear in x and in s); the gradient reaches the classifier through ds
//   Gate         per row of E logits z: p = softmax(z/T) (or z), keep the k largest of p (ties: lower index first),
//                y = a softmax over the kept entries (softmax-top-k) or p on the kept entries, 0 elsewhere.
//                Backward through the two softmaxes (the selection is piecewise constant):
//                dq = softmax-top-k ? y ⊙ (g − Σ_kept g·y) : g;  dp = dq ⊙ keep;  dz = softmax ? p ⊙ (dp − Σ dp·p)/T : dp
//   ReluDropout  y = max(x, 0) ⊙ m, m the seeded dropout multipliers of index i (0 or 1/(1 − p); GpuDropout, the
//                CPU's DropoutHash, so the masks agree bit for bit);  dx = g ⊙ m ⊙ [x > 0]
// One thread per element (ScaleRows, ReluDropout) or per row (ds, the gate: rows of E experts, E a handful, and the
// top-k is a rank count, O(E²) per row); no atomics. The keep flags are an int view (1 kept, 0 not) saved for backward.
namespace PeftKernels.Kernels.Gpu;

/// <summary>X-LoRA's row scaling, classifier gate and ReLU-dropout on an ILGPU accelerator.</summary>
public static class XLoraKernels
{
    /// <summary>y[i, :] = s[i·c + column]·x[i, :] for x [n, d] and s [n, c]. Enqueues only.</summary>
    public static void ScaleRows(Accelerator accelerator, FloatView x, FloatView s, FloatView y, int n, int d, int c, int column)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.ScaleRows(x.Length, s.Length, y.Length, n, d, c, column);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (x.Length != 0)
        {
            Loaded.For(accelerator).Scale((int)x.Length, x, s, y, d, c, column);
        }
    }

    /// <summary>dx = s[:, column] ⊙ g row-wise (skipped when dx is empty); ds [n, c] = row dots in the column, 0 elsewhere (overwritten; skipped when empty). Enqueues only.</summary>
    public static void ScaleRowsBackward(Accelerator accelerator, FloatView g, FloatView x, FloatView s, FloatView dx, FloatView ds, int n, int d, int c, int column)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.ScaleRowsBackward(g.Length, x.Length, s.Length, dx.Length, ds.Length, n, d, c, column);
        GpuCheck.FitsInt(g.Length, nameof(g));
        GpuCheck.FitsInt(s.Length, nameof(s));
        var loaded = Loaded.For(accelerator);
        if (dx.Length != 0)
        {
            loaded.Scale((int)dx.Length, g, s, dx, d, c, column);
        }

        if (ds.Length != 0)
        {
            loaded.RowDots((int)ds.Length, g, x, ds, d, c, column);
        }
    }

    /// <summary>
    /// The gate over z [rows·E] (rows groups of E): p (the softmax, or z), keep (1 for the k kept entries of each group, else 0)
    /// and y, all overwritten. softmax and softmaxTopK as the op's options. Enqueues only.
    /// </summary>
    public static void Gate(Accelerator accelerator, FloatView z, FloatView p, IntView keep, FloatView y, int rows, int e, float temperature, bool softmax,
        int k, bool softmaxTopK)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.Gate(z.Length, p.Length, keep.Length, y.Length, rows, e, temperature, k);
        GpuCheck.FitsInt(z.Length, nameof(z));
        if (rows != 0)
        {
            Loaded.For(accelerator).Gate(rows, z, p, keep, y, e, temperature, softmax ? 1 : 0, k, softmaxTopK ? 1 : 0);
        }
    }

    /// <summary>dz [rows·E] (overwritten) from g, the forward's y, p and keep. Enqueues only.</summary>
    public static void GateBackward(Accelerator accelerator, FloatView g, FloatView y, FloatView p, IntView keep, FloatView dz, int rows, int e, float temperature,
        bool softmax, bool softmaxTopK)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.GateBackward(g.Length, y.Length, p.Length, keep.Length, dz.Length, rows, e, temperature);
        GpuCheck.FitsInt(g.Length, nameof(g));
        if (rows != 0)
        {
            Loaded.For(accelerator).GateBackward(rows, g, y, p, keep, dz, e, temperature, softmax ? 1 : 0, softmaxTopK ? 1 : 0);
        }
    }

    /// <summary>y = max(x, 0) ⊙ m, m the dropout multipliers of (p, seed) at each index (none when p is 0). Enqueues only.</summary>
    public static void ReluDropout(Accelerator accelerator, FloatView x, FloatView y, float p, ulong seed)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.ReluDropout(x.Length, y.Length, p);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (x.Length != 0)
        {
            Loaded.For(accelerator).ReluDropout((int)x.Length, x, x, y, new GpuDropout(p, seed));
        }
    }

    /// <summary>dx = g ⊙ m ⊙ [x &gt; 0] with the forward's (p, seed). Enqueues only.</summary>
    public static void ReluDropoutBackward(Accelerator accelerator, FloatView g, FloatView x, FloatView dx, float p, ulong seed)
    {
        GpuCheck.NotNull(accelerator);
        XLoraShapes.ReluDropoutBackward(g.Length, x.Length, dx.Length, p);
        GpuCheck.FitsInt(g.Length, nameof(g));
        if (g.Length != 0)
        {
            Loaded.For(accelerator).ReluDropout((int)g.Length, g, x, dx, new GpuDropout(p, seed));
        }
    }

    internal static void ScaleKernel(Index1D i, FloatView x, FloatView s, FloatView y, int d, int c, int column) =>
        y[i] = x[i] * s[((i / d) * c) + column];

    internal static void RowDotsKernel(Index1D i, FloatView g, FloatView x, FloatView ds, int d, int c, int column)
    {
        int row = i / c;
        float sum = 0f;
        if (i - (row * c) == column)
        {
            for (int j = 0; j < d; j++)
            {
                sum += g[(row * d) + j] * x[(row * d) + j];
            }
        }

        ds[i] = sum;
    }

    /// <summary>y = v·m where x &gt; 0 (v the value, x the forward input; forward: v = x), else 0.</summary>
    internal static void ReluDropoutKernel(Index1D i, FloatView v, FloatView x, FloatView y, GpuDropout drop) =>
        y[i] = x[i] > 0f ? drop.Apply(v[i], i) : 0f;

    internal static void GateKernel(Index1D row, FloatView z, FloatView p, IntView keep, FloatView y, int e, float temperature, int softmax, int k, int softmaxTopK)
    {
        int at = row * e;
        if (softmax != 0)
        {
            float max = float.NegativeInfinity;
            for (int j = 0; j < e; j++)
            {
                max = MathF.Max(max, z[at + j] * (1f / temperature));
            }

            float sum = 0f;
            for (int j = 0; j < e; j++)
            {
                float v = MathF.Exp((z[at + j] * (1f / temperature)) - max);
                p[at + j] = v;
                sum += v;
            }

            for (int j = 0; j < e; j++)
            {
                p[at + j] /= sum;
            }
        }
        else
        {
            for (int j = 0; j < e; j++)
            {
                p[at + j] = z[at + j];
            }
        }

        // Rank = the entries ahead of j (larger, or equal with a lower index): kept when below k.
        float keptMax = float.NegativeInfinity;
        for (int j = 0; j < e; j++)
        {
            float pj = p[at + j];
            int rank = 0;
            for (int m = 0; m < e; m++)
            {
                float pm = p[at + m];
                rank += pm > pj || (pm == pj && m < j) ? 1 : 0;
            }

            int kept = rank < k ? 1 : 0;
            keep[at + j] = kept;
            keptMax = kept != 0 ? MathF.Max(keptMax, pj) : keptMax;
        }

        if (softmaxTopK == 0)
        {
            for (int j = 0; j < e; j++)
            {
                y[at + j] = keep[at + j] != 0 ? p[at + j] : 0f;
            }

            return;
        }

        float total = 0f;
        for (int j = 0; j < e; j++)
        {
            float v = keep[at + j] != 0 ? MathF.Exp(p[at + j] - keptMax) : 0f;
            y[at + j] = v;
            total += v;
        }

        for (int j = 0; j < e; j++)
        {
            y[at + j] /= total;
        }
    }

    internal static void GateBackwardKernel(Index1D row, FloatView g, FloatView y, FloatView p, IntView keep, FloatView dz, int e, float temperature, int softmax, int softmaxTopK)
    {
        int at = row * e;
        float dot = 0f;
        for (int j = 0; j < e; j++)
        {
            dot += keep[at + j] != 0 ? g[at + j] * y[at + j] : 0f;
        }

        float inner = 0f;
        for (int j = 0; j < e; j++)
        {
            float dq = softmaxTopK != 0 ? y[at + j] * (g[at + j] - dot) : g[at + j];
            float dp = keep[at + j] != 0 ? dq : 0f;
            dz[at + j] = dp;
            inner += dp * p[at + j];
        }

        if (softmax != 0)
        {
            for (int j = 0; j < e; j++)
            {
                dz[at + j] = p[at + j] * (dz[at + j] - inner) / temperature;
            }
        }
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int, int, int> Scale;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int, int, int> RowDots;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, GpuDropout> ReluDropout;
        public readonly Action<Index1D, FloatView, FloatView, IntView, FloatView, int, float, int, int, int> Gate;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, IntView, FloatView, int, float, int, int> GateBackward;

        private Loaded(Accelerator a)
        {
            Scale = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int, int, int>(ScaleKernel);
            RowDots = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int, int, int>(RowDotsKernel);
            ReluDropout = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, GpuDropout>(ReluDropoutKernel);
            Gate = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, IntView, FloatView, int, float, int, int, int>(GateKernel);
            GateBackward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, IntView, FloatView, int, float, int, int>(GateBackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
