// AdapterFusion in double, row by row: s_i = (q·k_i)/T, p = softmax(s), y = Σ_i p_i·v_i, with
// q [n, H] and k, v [N, n, H]; and the fusion regularization R(V) = Σ_ab (I − V)_ab² with
// dR/dV = 2·(V − I). Backward of the mix: dv_i = p_i·g, ds_i = p_i·(g·v_i − Σ_j p_j·g·v_j),
// dq = Σ_i ds_i·k_i/T, dk_i = ds_i·q/T.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision AdapterFusion mixing and regularization: the specification of FusionMix.</summary>
public static class FusionMixReference
{
    /// <summary>y [n, H] from q [n, H], k and v [N, n, H].</summary>
    public static double[] Forward(double[] q, double[] k, double[] v, int n, int hidden, int adapters, double temperature)
    {
        var y = new double[n * hidden];
        for (int r = 0; r < n; r++)
        {
            var p = Probabilities(q, k, r, n, hidden, adapters, temperature);
            for (int i = 0; i < adapters; i++)
            {
                for (int c = 0; c < hidden; c++)
                {
                    y[(r * hidden) + c] += p[i] * v[(((i * n) + r) * hidden) + c];
                }
            }
        }

        return y;
    }

    /// <summary>(dq, dk, dv) for the output gradient g [n, H].</summary>
    public static (double[] Dq, double[] Dk, double[] Dv) Backward(double[] g, double[] q, double[] k, double[] v, int n, int hidden, int adapters, double temperature)
    {
        var dq = new double[n * hidden];
        var dk = new double[adapters * n * hidden];
        var dv = new double[adapters * n * hidden];
        for (int r = 0; r < n; r++)
        {
            var p = Probabilities(q, k, r, n, hidden, adapters, temperature);
            var dp = new double[adapters];
            double weighted = 0;
            for (int i = 0; i < adapters; i++)
            {
                for (int c = 0; c < hidden; c++)
                {
                    dp[i] += g[(r * hidden) + c] * v[(((i * n) + r) * hidden) + c];
                }

                weighted += p[i] * dp[i];
            }

            for (int i = 0; i < adapters; i++)
            {
                double ds = p[i] * (dp[i] - weighted) / temperature;
                for (int c = 0; c < hidden; c++)
                {
                    int at = (((i * n) + r) * hidden) + c;
                    dq[(r * hidden) + c] += ds * k[at];
                    dk[at] = ds * q[(r * hidden) + c];
                    dv[at] = p[i] * g[(r * hidden) + c];
                }
            }
        }

        return (dq, dk, dv);
    }

    /// <summary>Σ (I − V)² over a square V [d, d].</summary>
    public static double Regularization(double[] v, int d)
    {
        double sum = 0;
        for (int a = 0; a < d; a++)
        {
            for (int b = 0; b < d; b++)
            {
                double e = (a == b ? 1 : 0) - v[(a * d) + b];
                sum += e * e;
            }
        }

        return sum;
    }

    private static double[] Probabilities(double[] q, double[] k, int r, int n, int hidden, int adapters, double temperature)
    {
        var s = new double[adapters];
        for (int i = 0; i < adapters; i++)
        {
            for (int c = 0; c < hidden; c++)
            {
                s[i] += q[(r * hidden) + c] * k[(((i * n) + r) * hidden) + c];
            }

            s[i] /= temperature;
        }

        double max = s.Max();
        var e = s.Select(x => Math.Exp(x - max)).ToArray();
        double sum = e.Sum();
        return e.Select(x => x / sum).ToArray();
    }
}
