// X-LoRA's three ops (docs/formats/xlora.md) in double: the specification of Functional.ScaleRows,
// Functional.XLoraGate and Functional.ReluDropout. Row-major.
// ScaleRows: x, y [n, d], s [n, c], one column k of s scales each row:
//   y[i, :] = s[i, k] · x[i, :]      dx[i, :] = s[i, k] · g[i, :]      ds[i, k] = Σ_j g[i, j] · x[i, j]
// XLoraGate: z, y [n, groups·e]; per row and group of e entries:
//   p = softmax(z / T) (or p = z);  keep = the top k of p (all when k = 0; ties: lower index);
//   y = softmax over the kept entries of p, 0 elsewhere (softmaxTopK), or p ⊙ keep.
//   Backward: dq = softmaxTopK ? o ⊙ (g − Σ_kept g·o) on kept : g;  dp = dq ⊙ keep;
//             dz = softmax ? p ⊙ (dp − Σ dp·p) / T : dp.
// ReluDropout: y = max(x, 0) ⊙ m, m the dropout multipliers (0 or 1/(1 − p)); dx = g ⊙ m ⊙ [x > 0].
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision X-LoRA ops, forward and backward.</summary>
public static class XLoraReference
{
    /// <summary>y[i, :] = s[i, column] · x[i, :] for x [n, d] and s [n, c].</summary>
    public static double[] ScaleRows(double[] x, double[] s, int n, int d, int c, int column)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < d; j++)
            {
                y[(i * d) + j] = s[(i * c) + column] * x[(i * d) + j];
            }
        }

        return y;
    }

    /// <summary>dx = s[:, column] ⊙ g (per row), ds[:, column] = Σ_j g ⊙ x (other columns 0).</summary>
    public static (double[] Dx, double[] Ds) ScaleRowsBackward(double[] g, double[] x, double[] s, int n, int d, int c, int column)
    {
        var dx = ScaleRows(g, s, n, d, c, column);
        var ds = new double[n * c];
        for (int i = 0; i < n; i++)
        {
            double sum = 0;
            for (int j = 0; j < d; j++)
            {
                sum += g[(i * d) + j] * x[(i * d) + j];
            }

            ds[(i * c) + column] = sum;
        }

        return (dx, ds);
    }

    /// <summary>The gate of every row and group of <paramref name="e"/> entries; returns y and the keep mask.</summary>
    public static (double[] Y, bool[] Keep, double[] P) Gate(double[] z, int n, int groups, int e, double temperature, bool softmax, int topK, bool softmaxTopK)
    {
        int width = groups * e;
        var y = new double[n * width];
        var keep = new bool[n * width];
        var p = new double[n * width];
        for (int row = 0; row < n * groups; row++)
        {
            int at = row * e;
            if (softmax)
            {
                double max = double.NegativeInfinity, sum = 0;
                for (int j = 0; j < e; j++)
                {
                    max = Math.Max(max, z[at + j] / temperature);
                }

                for (int j = 0; j < e; j++)
                {
                    p[at + j] = Math.Exp((z[at + j] / temperature) - max);
                    sum += p[at + j];
                }

                for (int j = 0; j < e; j++)
                {
                    p[at + j] /= sum;
                }
            }
            else
            {
                Array.Copy(z, at, p, at, e);
            }

            var order = Enumerable.Range(0, e).OrderByDescending(j => p[at + j]).ThenBy(j => j).ToArray();
            int k = topK <= 0 ? e : Math.Min(topK, e);
            foreach (int j in order.Take(k))
            {
                keep[at + j] = true;
            }

            if (softmaxTopK)
            {
                double max = double.NegativeInfinity, sum = 0;
                for (int j = 0; j < e; j++)
                {
                    max = keep[at + j] ? Math.Max(max, p[at + j]) : max;
                }

                for (int j = 0; j < e; j++)
                {
                    y[at + j] = keep[at + j] ? Math.Exp(p[at + j] - max) : 0;
                    sum += y[at + j];
                }

                for (int j = 0; j < e; j++)
                {
                    y[at + j] /= sum;
                }
            }
            else
            {
                for (int j = 0; j < e; j++)
                {
                    y[at + j] = keep[at + j] ? p[at + j] : 0;
                }
            }
        }

        return (y, keep, p);
    }

    /// <summary>dz of the gate for the incoming gradient <paramref name="g"/>.</summary>
    public static double[] GateBackward(double[] g, double[] z, int n, int groups, int e, double temperature, bool softmax, int topK, bool softmaxTopK)
    {
        var (y, keep, p) = Gate(z, n, groups, e, temperature, softmax, topK, softmaxTopK);
        var dz = new double[z.Length];
        var dp = new double[e];
        for (int row = 0; row < n * groups; row++)
        {
            int at = row * e;
            double dot = 0;
            for (int j = 0; j < e; j++)
            {
                dot += keep[at + j] ? g[at + j] * y[at + j] : 0;
            }

            for (int j = 0; j < e; j++)
            {
                double dq = softmaxTopK ? y[at + j] * (g[at + j] - dot) : g[at + j];
                dp[j] = keep[at + j] ? dq : 0;
            }

            if (softmax)
            {
                double inner = 0;
                for (int j = 0; j < e; j++)
                {
                    inner += dp[j] * p[at + j];
                }

                for (int j = 0; j < e; j++)
                {
                    dz[at + j] = p[at + j] * (dp[j] - inner) / temperature;
                }
            }
            else
            {
                Array.Copy(dp, 0, dz, at, e);
            }
        }

        return dz;
    }

    /// <summary>y = max(x, 0) ⊙ m.</summary>
    public static double[] ReluDropout(double[] x, double[] m) => [.. x.Select((v, i) => Math.Max(v, 0) * m[i])];

    /// <summary>dx = g ⊙ m ⊙ [x &gt; 0].</summary>
    public static double[] ReluDropoutBackward(double[] g, double[] x, double[] m) => [.. g.Select((v, i) => x[i] > 0 ? v * m[i] : 0)];
}
