// Causal grouped-query attention, forward and backward, in double. Shapes (row-major):
//   q, o, dO, dq [B, Tq, H, d]     k, v, dk, dv [B, Tk, Hkv, d]     lse [B, H, Tq]
// Queries are the last Tq of Tk positions: query i sees key j iff j ≤ i + (Tk − Tq); query
// head h uses kv head h / (H / Hkv).
// Forward, per (b, h, i), over the visible keys j:
//   s_j = scale · q_i·k_j      lse_i = log Σ_j exp(s_j)      p_j = exp(s_j − lse_i)
//   o_i = Σ_j p_j v_j
// Backward, g = dO, through the softmax Jacobian J_jl = ∂p_j/∂s_l = p_j (δ_jl − p_l):
//   dv_j += p_j g_i       dp_j = g_i·v_j       ds_l = Σ_j dp_j J_jl
//   dq_i += scale Σ_l ds_l k_l                 dk_l += scale ds_l q_i
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision causal GQA attention: the specification of Attention.</summary>
public static class AttentionReference
{
    /// <summary>Forward in double: o and lse (log-sum-exp of the scaled visible scores).</summary>
    public static (double[] O, double[] Lse) Forward(double[] q, double[] k, double[] v,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, double scale)
    {
        var o = new double[batch * queryLength * heads * headDim];
        var lse = new double[batch * heads * queryLength];
        for (int b = 0; b < batch; b++)
        {
            for (int h = 0; h < heads; h++)
            {
                for (int i = 0; i < queryLength; i++)
                {
                    var (p, logSum) = Probabilities(q, k, b, i, h, queryLength, keyLength, heads, kvHeads, headDim, scale);
                    lse[(((b * heads) + h) * queryLength) + i] = logSum;
                    int g = h / (heads / kvHeads);
                    for (int j = 0; j < p.Length; j++)
                    {
                        for (int e = 0; e < headDim; e++)
                        {
                            o[QIndex(b, i, h, queryLength, heads, headDim) + e] += p[j] * v[KIndex(b, j, g, keyLength, kvHeads, headDim) + e];
                        }
                    }
                }
            }
        }

        return (o, lse);
    }

    /// <summary>Backward in double: dq, dk, dv for the output gradient <paramref name="dO"/>.</summary>
    public static (double[] Dq, double[] Dk, double[] Dv) Backward(double[] dO, double[] q, double[] k, double[] v,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, double scale)
    {
        var dq = new double[q.Length];
        var dk = new double[k.Length];
        var dv = new double[v.Length];
        for (int b = 0; b < batch; b++)
        {
            for (int h = 0; h < heads; h++)
            {
                int g = h / (heads / kvHeads);
                for (int i = 0; i < queryLength; i++)
                {
                    var (p, _) = Probabilities(q, k, b, i, h, queryLength, keyLength, heads, kvHeads, headDim, scale);
                    int qi = QIndex(b, i, h, queryLength, heads, headDim);
                    var dp = new double[p.Length];
                    for (int j = 0; j < p.Length; j++)
                    {
                        int kj = KIndex(b, j, g, keyLength, kvHeads, headDim);
                        for (int e = 0; e < headDim; e++)
                        {
                            dv[kj + e] += p[j] * dO[qi + e];
                            dp[j] += dO[qi + e] * v[kj + e];
                        }
                    }

                    for (int l = 0; l < p.Length; l++)
                    {
                        double ds = 0;
                        for (int j = 0; j < p.Length; j++)
                        {
                            ds += dp[j] * p[j] * ((j == l ? 1.0 : 0.0) - p[l]);
                        }

                        int kl = KIndex(b, l, g, keyLength, kvHeads, headDim);
                        for (int e = 0; e < headDim; e++)
                        {
                            dq[qi + e] += scale * ds * k[kl + e];
                            dk[kl + e] += scale * ds * q[qi + e];
                        }
                    }
                }
            }
        }

        return (dq, dk, dv);
    }

    /// <summary>Softmax over the visible keys 0..i + offset of query i, head h, and its log-sum-exp.</summary>
    private static (double[] P, double Lse) Probabilities(double[] q, double[] k, int b, int i, int h,
        int queryLength, int keyLength, int heads, int kvHeads, int headDim, double scale)
    {
        int g = h / (heads / kvHeads);
        var s = new double[i + (keyLength - queryLength) + 1];
        for (int j = 0; j < s.Length; j++)
        {
            for (int e = 0; e < headDim; e++)
            {
                s[j] += q[QIndex(b, i, h, queryLength, heads, headDim) + e] * k[KIndex(b, j, g, keyLength, kvHeads, headDim) + e];
            }

            s[j] *= scale;
        }

        double max = s.Max();
        double logSum = max + Math.Log(s.Sum(x => Math.Exp(x - max)));
        return (s.Select(x => Math.Exp(x - logSum)).ToArray(), logSum);
    }

    private static int QIndex(int b, int i, int h, int queryLength, int heads, int headDim) =>
        ((((b * queryLength) + i) * heads) + h) * headDim;

    private static int KIndex(int b, int j, int g, int keyLength, int kvHeads, int headDim) =>
        ((((b * keyLength) + j) * kvHeads) + g) * headDim;
}
