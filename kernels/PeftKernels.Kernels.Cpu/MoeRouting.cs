// Token routing of a mixture of experts on the CPU (MixLoRA, docs/formats/mixlora.md#routing); the
// specification is Kernels.Reference.MoeRoutingReference. Rows are tokens:
//   softmax     p = softmax(z) per row of z [n, E];  dz = p ⊙ (g − <g, p>)
//   top-k       sel = the k largest p per row (ties: lower expert first), w = p[sel] / Σ p[sel]   [n, k]
//               dp[sel_j] = (g_j − <g, w>) / Σ p[sel]  (0 for the experts not chosen)
//   routed sum  y[rows[i], :] += w[rows[i], slots[i]] · part[i, :]   (one expert's part; called per expert)
//               dpart[i, :] = w·g[rows[i], :],  dw[rows[i], slots[i]] += <part[i, :], g[rows[i], :]>
//               (dpart overwritten, or accumulated into a gradient that already exists: no second buffer)
// The routing rows are short (E experts), so they run serially; the routed sum axpys whole rows with
// TensorPrimitives, split over the threads when large (by target row in the forward, by source row in the
// backward; the bits do not depend on the thread count) (the row gather is Kernels.Cpu.RowSelect, shared with the bottleneck sites). Fractions of the routed experts are exact counts.
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>MoE routing kernels on the CPU: softmax, top-k renormalised and the routing-weighted scatter.</summary>
public static unsafe class MoeRouting
{
    /// <summary>p = softmax(z) per row; z and p [n, e].</summary>
    public static void Softmax(ReadOnlySpan<float> z, Span<float> p, int n, int e)
    {
        MoeRoutingShapes.Softmax(z.Length, p.Length, n, e);
        for (int t = 0; t < n; t++)
        {
            TensorPrimitives.SoftMax(z.Slice(t * e, e), p.Slice(t * e, e));
        }
    }

    /// <summary>dz = p ⊙ (g − &lt;g, p&gt;) per row (overwrites dz).</summary>
    public static void SoftmaxBackward(ReadOnlySpan<float> g, ReadOnlySpan<float> p, Span<float> dz, int n, int e)
    {
        MoeRoutingShapes.SoftmaxBackward(g.Length, p.Length, dz.Length, n, e);
        for (int t = 0; t < n; t++)
        {
            var gr = g.Slice(t * e, e);
            var pr = p.Slice(t * e, e);
            var dr = dz.Slice(t * e, e);
            float dot = TensorPrimitives.Dot(gr, pr);
            TensorPrimitives.Subtract(gr, dot, dr);
            TensorPrimitives.Multiply(dr, pr, dr);
        }
    }

    /// <summary>The k largest probabilities of each row of p [n, e] (ties: lower expert first) into sel [n, k], their renormalised values into w [n, k].</summary>
    public static void TopK(ReadOnlySpan<float> p, Span<int> sel, Span<float> w, int n, int e, int k)
    {
        MoeRoutingShapes.TopK(p.Length, sel.Length, w.Length, n, e, k);
        for (int t = 0; t < n; t++)
        {
            var row = p.Slice(t * e, e);
            var s = sel.Slice(t * k, k);
            int count = 0;
            for (int j = 0; j < e; j++)
            {
                // Insertion into the sorted prefix: strictly greater moves ahead, so equal values keep the lower index first.
                int at = count;
                while (at > 0 && row[j] > row[s[at - 1]])
                {
                    at--;
                }

                if (at >= k)
                {
                    continue;
                }

                for (int m = Math.Min(count, k - 1); m > at; m--)
                {
                    s[m] = s[m - 1];
                }

                s[at] = j;
                count = Math.Min(count + 1, k);
            }

            float sum = 0;
            for (int j = 0; j < k; j++)
            {
                sum += row[s[j]];
            }

            for (int j = 0; j < k; j++)
            {
                w[(t * k) + j] = row[s[j]] / sum;
            }
        }
    }

    /// <summary>dp [n, e] (overwritten) from g = dL/dw [n, k] through the renormalisation of <see cref="TopK"/>.</summary>
    public static void TopKBackward(ReadOnlySpan<float> g, ReadOnlySpan<float> p, ReadOnlySpan<int> sel, ReadOnlySpan<float> w, Span<float> dp, int n, int e, int k)
    {
        MoeRoutingShapes.TopKBackward(g.Length, p.Length, sel.Length, w.Length, dp.Length, n, e, k);
        dp.Clear();
        for (int t = 0; t < n; t++)
        {
            float sum = 0, dot = 0;
            for (int j = 0; j < k; j++)
            {
                sum += p[(t * e) + sel[(t * k) + j]];
                dot += g[(t * k) + j] * w[(t * k) + j];
            }

            for (int j = 0; j < k; j++)
            {
                dp[(t * e) + sel[(t * k) + j]] = (g[(t * k) + j] - dot) / sum;
            }
        }
    }

    /// <summary>
    /// y[rows[i], :] += w[rows[i]·k + slots[i]] · part[i, :] (one expert's share of the routed sum; y [n, c] accumulates, each
    /// row's terms in i order). Large calls split y's rows over the threads (sources grouped by target): the same bits for any
    /// thread count.
    /// </summary>
    public static void RoutedSum(ReadOnlySpan<float> part, ReadOnlySpan<int> rows, ReadOnlySpan<int> slots, ReadOnlySpan<float> w, Span<float> y, int n, int c, int k,
        KernelOptions options = default)
    {
        MoeRoutingShapes.RoutedSum(part.Length, rows.Length, slots.Length, w.Length, y.Length, n, c, k);
        MoeRoutingShapes.Routes(rows, slots, n, k);
        int parts = RowSelect.Parts(n, (long)rows.Length * c, options);
        if (parts == 1)
        {
            for (int i = 0; i < rows.Length; i++)
            {
                var dst = y.Slice(rows[i] * c, c);
                TensorPrimitives.MultiplyAdd(part.Slice(i * c, c), w[(rows[i] * k) + slots[i]], dst, dst);
            }

            return;
        }

        var (first, order) = RowGroups.ByTarget(rows, n);
        var (rowArray, slotArray) = (rows.ToArray(), slots.ToArray());
        fixed (float* pp = part, pw = w, py = y)
        {
            nint partp = (nint)pp, wp = (nint)pw, yp = (nint)py;
            CpuParallel.For(parts, parts, p =>
            {
                var (r0, r1) = CpuParallel.Split(n, parts, p);
                for (int r = r0; r < r1; r++)
                {
                    var dst = new Span<float>((float*)yp + ((long)r * c), c);
                    for (int q = first[r]; q < first[r + 1]; q++)
                    {
                        int i = order[q];
                        float wi = ((float*)wp)[(rowArray[i] * k) + slotArray[i]];
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>((float*)partp + ((long)i * c), c), wi, dst, dst);
                    }
                }
            });
        }
    }

    /// <summary>
    /// Backward of one expert's <see cref="RoutedSum"/>: dpart[i, :] = w·g[rows[i], :] (overwritten, or added to when
    /// <paramref name="accumulate"/>; skipped when dpart is empty) and dw[rows[i]·k + slots[i]] += &lt;part[i, :], g[rows[i], :]&gt;
    /// (when dw is not empty; added in i order). dw reads part before dpart's row is written, so dpart may share part's storage.
    /// Large calls split the rows i over the threads (each row's dot and dpart row on one thread; the dots are then added into
    /// dw in i order): the same bits for any thread count.
    /// </summary>
    public static void RoutedSumBackward(ReadOnlySpan<float> g, ReadOnlySpan<float> part, ReadOnlySpan<int> rows, ReadOnlySpan<int> slots, ReadOnlySpan<float> w,
        Span<float> dpart, Span<float> dw, int n, int c, int k, bool accumulate = false, KernelOptions options = default)
    {
        MoeRoutingShapes.RoutedSumBackward(g.Length, part.Length, rows.Length, dpart.Length, dw.Length, n, c, k);
        MoeRoutingShapes.Routes(rows, slots, n, k);
        int count = rows.Length, parts = RowSelect.Parts(count, (long)count * c, options);
        var dots = dw.IsEmpty ? [] : new float[count];
        bool wantDw = !dw.IsEmpty, wantDpart = !dpart.IsEmpty;
        var (rowArray, slotArray) = (rows.ToArray(), slots.ToArray());
        fixed (float* pg = g, pp = part, pw = w, pd = dpart)
        {
            nint gp = (nint)pg, partp = (nint)pp, wp = (nint)pw, dp = (nint)pd;
            CpuParallel.For(parts, parts, p =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, p);
                for (int i = i0; i < i1; i++)
                {
                    var gr = new ReadOnlySpan<float>((float*)gp + ((long)rowArray[i] * c), c);
                    if (wantDw)
                    {
                        dots[i] = TensorPrimitives.Dot(new ReadOnlySpan<float>((float*)partp + ((long)i * c), c), gr);
                    }

                    if (wantDpart)
                    {
                        var dst = new Span<float>((float*)dp + ((long)i * c), c);
                        float wi = ((float*)wp)[(rowArray[i] * k) + slotArray[i]];
                        if (accumulate)
                        {
                            TensorPrimitives.MultiplyAdd(gr, wi, dst, dst);
                        }
                        else
                        {
                            TensorPrimitives.Multiply(gr, wi, dst);
                        }
                    }
                }
            });
        }

        for (int i = 0; i < dots.Length; i++)
        {
            dw[(rows[i] * k) + slots[i]] += dots[i];
        }
    }
}
