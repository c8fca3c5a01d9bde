// Token routing of a mixture of experts (MixLoRA, docs/formats/mixlora.md#routing), in double: the
// specification of Kernels.Cpu.MoeRouting. Logits z [n, E] per token (row):
//   softmax      p[t, e] = exp(z[t, e] − max) / Σ_e' exp(z[t, e'] − max)
//                backward dz[t, e] = p[t, e]·(g[t, e] − Σ_e' g[t, e']·p[t, e'])
//   top-k        sel[t, 0..k) = the k largest p[t, ·] (ties: lower expert first), S = Σ_j p[t, sel[t, j]]
//                w[t, j] = p[t, sel[t, j]] / S                                      [n, k]
//                backward dp[t, sel[t, j]] = (g[t, j] − Σ_l g[t, l]·w[t, l]) / S, 0 for the others
//   balance      over L routed layers of n tokens each (all layers' tokens pooled, as the reference does):
//                F[e] = (# of (layer, token, slot) choosing e) / (L·n),  P[e] = Σ_{l,t} p_l[t, e] / (L·n)
//                aux = coef · E · Σ_e F[e]·P[e];   d aux / d p_l[t, e] = coef · E · F[e] / (L·n)
//   routed sum   out[rows_e[i], :] += w[rows_e[i], slot_e[i]] · part_e[i, :]   over experts e, i < |rows_e|
//                backward dpart_e[i, :] = w[..]·g[rows_e[i], :],  dw[rows_e[i], slot_e[i]] = <part_e[i, :], g[rows_e[i], :]>
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision MoE routing (softmax, top-k renormalised, load-balancing loss, routed sum).</summary>
public static class MoeRoutingReference
{
    /// <summary>Row-wise softmax of z [n, e].</summary>
    public static double[] Softmax(double[] z, int n, int e)
    {
        var p = new double[n * e];
        for (int t = 0; t < n; t++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < e; j++)
            {
                max = Math.Max(max, z[(t * e) + j]);
            }

            for (int j = 0; j < e; j++)
            {
                p[(t * e) + j] = Math.Exp(z[(t * e) + j] - max);
                sum += p[(t * e) + j];
            }

            for (int j = 0; j < e; j++)
            {
                p[(t * e) + j] /= sum;
            }
        }

        return p;
    }

    /// <summary>Backward of the row-wise softmax: dz from g = dL/dp and p.</summary>
    public static double[] SoftmaxBackward(double[] g, double[] p, int n, int e)
    {
        var dz = new double[n * e];
        for (int t = 0; t < n; t++)
        {
            double dot = 0;
            for (int j = 0; j < e; j++)
            {
                dot += g[(t * e) + j] * p[(t * e) + j];
            }

            for (int j = 0; j < e; j++)
            {
                dz[(t * e) + j] = p[(t * e) + j] * (g[(t * e) + j] - dot);
            }
        }

        return dz;
    }

    /// <summary>The k largest of each row of p [n, e] (ties: lower index first) and their renormalised weights [n, k].</summary>
    public static (int[] Selected, double[] Weights) TopK(double[] p, int n, int e, int k)
    {
        var sel = new int[n * k];
        var w = new double[n * k];
        for (int t = 0; t < n; t++)
        {
            var order = Enumerable.Range(0, e).OrderByDescending(j => p[(t * e) + j]).ThenBy(j => j).Take(k).ToArray();
            double s = order.Sum(j => p[(t * e) + j]);
            for (int j = 0; j < k; j++)
            {
                sel[(t * k) + j] = order[j];
                w[(t * k) + j] = p[(t * e) + order[j]] / s;
            }
        }

        return (sel, w);
    }

    /// <summary>Backward of <see cref="TopK"/>: dp [n, e] from g = dL/dw [n, k].</summary>
    public static double[] TopKBackward(double[] g, double[] p, int[] sel, int n, int e, int k)
    {
        var dp = new double[n * e];
        for (int t = 0; t < n; t++)
        {
            double s = 0, dot = 0;
            for (int j = 0; j < k; j++)
            {
                s += p[(t * e) + sel[(t * k) + j]];
            }

            for (int j = 0; j < k; j++)
            {
                dot += g[(t * k) + j] * p[(t * e) + sel[(t * k) + j]] / s;
            }

            for (int j = 0; j < k; j++)
            {
                dp[(t * e) + sel[(t * k) + j]] = (g[(t * k) + j] - dot) / s;
            }
        }

        return dp;
    }

    /// <summary>coef·E·Σ_e F[e]·P[e] over the layers' probabilities p_l [n, e] and selections sel_l [n, k].</summary>
    public static double LoadBalancingLoss(IReadOnlyList<double[]> probs, IReadOnlyList<int[]> selected, int n, int e, int k, double coef)
    {
        var (f, total) = Fractions(selected, n, e, k);
        double loss = 0;
        for (int j = 0; j < e; j++)
        {
            double pSum = probs.Sum(p => Enumerable.Range(0, n).Sum(t => p[(t * e) + j]));
            loss += f[j] * pSum / total;
        }

        return coef * e * loss;
    }

    /// <summary>d aux / d p_l[t, e] = coef·E·F[e]/(L·n), the same for every layer and token.</summary>
    public static double[] LoadBalancingGradient(IReadOnlyList<int[]> selected, int n, int e, int k, double coef)
    {
        var (f, total) = Fractions(selected, n, e, k);
        return [.. f.Select(fe => coef * e * fe / total)];
    }

    /// <summary>out [n, c] = Σ_e scatter of w-weighted rows of part_e (see the header).</summary>
    public static double[] RoutedSum(IReadOnlyList<double[]> parts, IReadOnlyList<int[]> rows, IReadOnlyList<int[]> slots, double[] w, int n, int c, int k)
    {
        var y = new double[n * c];
        for (int e = 0; e < parts.Count; e++)
        {
            for (int i = 0; i < rows[e].Length; i++)
            {
                double wi = w[(rows[e][i] * k) + slots[e][i]];
                for (int j = 0; j < c; j++)
                {
                    y[(rows[e][i] * c) + j] += wi * parts[e][(i * c) + j];
                }
            }
        }

        return y;
    }

    private static (double[] F, double Total) Fractions(IReadOnlyList<int[]> selected, int n, int e, int k)
    {
        var f = new double[e];
        double total = (double)selected.Count * n;
        foreach (var sel in selected)
        {
            for (int i = 0; i < n * k; i++)
            {
                f[sel[i]] += 1;
            }
        }

        return ([.. f.Select(c => c / total)], total);
    }
}
