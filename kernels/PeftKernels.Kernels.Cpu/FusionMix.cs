// The attention of AdapterFusion over N adapter outputs, row by row (docs/formats/bottleneck-adapters.md#fuse):
//   s[r, i] = (q[r] · k[i, r]) / T,   p[r, ·] = softmax_i s[r, ·],   y[r] = Σ_i p[r, i] · v[i, r]
// with q [n, H] (the projected query), k and v [N, n, H] (each adapter's projected key and value, stacked).
// Backward (chain rule, g = dL/dy [n, H]):
//   dv[i, r] = p[r, i] · g[r]
//   dp[r, i] = g[r] · v[i, r],   ds[r, i] = p[r, i] · (dp[r, i] − Σ_j p[r, j] · dp[r, j])   (softmax Jacobian)
//   dq[r]    = Σ_i ds[r, i] · k[i, r] / T,   dk[i, r] = ds[r, i] · q[r] / T
// N is the number of fused adapters (a handful), so a plain loop over rows is enough.
namespace PeftKernels.Kernels.Cpu;

/// <summary>AdapterFusion's softmax mixing of adapter outputs on the CPU.</summary>
public static class FusionMix
{
    /// <summary>y [n, H] and the probabilities p [n, N] from q [n, H], k and v [N, n, H], temperature T.</summary>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> y, Span<float> p,
        int n, int hidden, int adapters, float temperature)
    {
        FusionMixShapes.Forward(q.Length, k.Length, v.Length, y.Length, p.Length, n, hidden, adapters, temperature);
        var scores = new float[adapters];
        for (int r = 0; r < n; r++)
        {
            var qr = q.Slice(r * hidden, hidden);
            float max = float.NegativeInfinity;
            for (int i = 0; i < adapters; i++)
            {
                scores[i] = Dot(qr, k.Slice(((i * n) + r) * hidden, hidden)) / temperature;
                max = MathF.Max(max, scores[i]);
            }

            float sum = 0f;
            for (int i = 0; i < adapters; i++)
            {
                scores[i] = MathF.Exp(scores[i] - max);
                sum += scores[i];
            }

            var yr = y.Slice(r * hidden, hidden);
            yr.Clear();
            for (int i = 0; i < adapters; i++)
            {
                float pi = scores[i] / sum;
                p[(r * adapters) + i] = pi;
                var vi = v.Slice(((i * n) + r) * hidden, hidden);
                for (int c = 0; c < hidden; c++)
                {
                    yr[c] += pi * vi[c];
                }
            }
        }
    }

    /// <summary>dq [n, H], dk and dv [N, n, H] (overwritten) from g [n, H] and the forward's inputs and probabilities.</summary>
    public static void Backward(ReadOnlySpan<float> g, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> p,
        Span<float> dq, Span<float> dk, Span<float> dv, int n, int hidden, int adapters, float temperature)
    {
        FusionMixShapes.Backward(g.Length, dq.Length, dk.Length, dv.Length, n, hidden, adapters);
        var ds = new float[adapters];
        for (int r = 0; r < n; r++)
        {
            var gr = g.Slice(r * hidden, hidden);
            var qr = q.Slice(r * hidden, hidden);
            float weighted = 0f;
            for (int i = 0; i < adapters; i++)
            {
                ds[i] = Dot(gr, v.Slice(((i * n) + r) * hidden, hidden));
                weighted += p[(r * adapters) + i] * ds[i];
            }

            var dqr = dq.Slice(r * hidden, hidden);
            dqr.Clear();
            for (int i = 0; i < adapters; i++)
            {
                float pi = p[(r * adapters) + i];
                float dsi = pi * (ds[i] - weighted) / temperature;
                int at = ((i * n) + r) * hidden;
                var ki = k.Slice(at, hidden);
                var dki = dk.Slice(at, hidden);
                var dvi = dv.Slice(at, hidden);
                for (int c = 0; c < hidden; c++)
                {
                    dqr[c] += dsi * ki[c];
                    dki[c] = dsi * qr[c];
                    dvi[c] = pi * gr[c];
                }
            }
        }
    }

    private static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b) => System.Numerics.Tensors.TensorPrimitives.Dot(a, b);
}
