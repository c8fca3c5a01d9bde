// AdapterFusion's attention over N adapter outputs on the GPU (FusionMix.cs on the CPU;
// docs/formats/bottleneck-adapters.md#fuse). q [n, H], k and v [N, n, H] stacked, y [n, H], p [n, N]:
//   s[r, i] = (q[r] · k[i, r]) / T,   p[r, ·] = softmax_i s[r, ·],   y[r] = Σ_i p[r, i] · v[i, r]
// Backward (chain rule, g = dL/dy; softmax Jacobian):
//   ds[r, i] = p[r, i] · (g[r]·v[i, r] − Σ_j p[r, j] · g[r]·v[j, r]) / T
//   dq[r] = Σ_i ds[r, i] · k[i, r],   dk[i, r] = ds[r, i] · q[r],   dv[i, r] = p[r, i] · g[r]
// Regularization of the value matrix V [d, d]: R = ‖I − V‖²_F, dR/dV = 2·g·(V − I).
// Layout: one thread per row computes that row's N scores, softmax and ds (N is a handful of adapters, H a hidden
// width: O(N·H) per thread); one thread per (row, column) then mixes y, or writes dq, dk and dv, summing over i in
// order. No atomics. ds lives in a caller-provided scratch [n, N]. R's sum is one group of 256 threads (fixed tree).
namespace PeftKernels.Kernels.Gpu;

/// <summary>AdapterFusion's softmax mixing and its value regularization on an ILGPU accelerator.</summary>
public static class FusionMixKernels
{
    /// <summary>y [n, H] and the probabilities p [n, N] from q [n, H], k and v [N, n, H], temperature T. Enqueues only.</summary>
    public static void Forward(Accelerator accelerator, FloatView q, FloatView k, FloatView v, FloatView y, FloatView p,
        int n, int hidden, int adapters, float temperature)
    {
        GpuCheck.NotNull(accelerator);
        FusionMixShapes.Forward(q.Length, k.Length, v.Length, y.Length, p.Length, n, hidden, adapters, temperature);
        GpuCheck.FitsInt(k.Length, nameof(k));
        if (n == 0)
        {
            return;
        }

        var loaded = Loaded.For(accelerator);
        loaded.Probs(n, q, k, p, n, hidden, adapters, temperature);
        if (hidden != 0)
        {
            loaded.Mix(n * hidden, v, p, y, n, hidden, adapters);
        }
    }

    /// <summary>
    /// dq [n, H], dk and dv [N, n, H] (overwritten) from g [n, H], the forward's inputs and probabilities p; ds [n, N] is scratch
    /// the caller provides. Enqueues only.
    /// </summary>
    public static void Backward(Accelerator accelerator, FloatView g, FloatView q, FloatView k, FloatView v, FloatView p, FloatView ds,
        FloatView dq, FloatView dk, FloatView dv, int n, int hidden, int adapters, float temperature)
    {
        GpuCheck.NotNull(accelerator);
        FusionMixShapes.Backward(g.Length, dq.Length, dk.Length, dv.Length, n, hidden, adapters);
        FusionMixShapes.BackwardInputs(q.Length, k.Length, v.Length, p.Length, ds.Length, n, hidden, adapters);
        FusionMixShapes.Temperature(temperature);
        GpuCheck.FitsInt(k.Length, nameof(k));
        if (n == 0 || hidden == 0)
        {
            return;
        }

        var loaded = Loaded.For(accelerator);
        loaded.Ds(n, g, v, p, ds, n, hidden, adapters, temperature);
        loaded.Grads(n * hidden, g, q, k, p, ds, dq, dk, dv, n, hidden, adapters);
    }

    /// <summary>sum[0] = ‖I − V‖²_F for V [d, d] (overwritten). Enqueues only.</summary>
    public static void Regularization(Accelerator accelerator, FloatView v, FloatView sum, int d)
    {
        GpuCheck.NotNull(accelerator);
        FusionMixShapes.Regularization(v.Length, sum.Length, d, "sum");
        GpuCheck.FitsInt(v.Length, nameof(v));
        Loaded.For(accelerator).Regularization(new KernelConfig(1, ScaleKernels.Threads), v, sum, d);
    }

    /// <summary>dv = 2·g·(V − I) for V [d, d] (overwritten). Enqueues only.</summary>
    public static void RegularizationBackward(Accelerator accelerator, FloatView v, float g, FloatView dv, int d)
    {
        GpuCheck.NotNull(accelerator);
        FusionMixShapes.Regularization(v.Length, dv.Length, d, "dv");
        GpuCheck.FitsInt(v.Length, nameof(v));
        if (d != 0)
        {
            Loaded.For(accelerator).RegularizationBackward(d * d, v, dv, g, d);
        }
    }

    internal static void ProbsKernel(Index1D r, FloatView q, FloatView k, FloatView p, int n, int hidden, int adapters, float temperature)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < adapters; i++)
        {
            float dot = 0f;
            int at = ((i * n) + r) * hidden;
            for (int c = 0; c < hidden; c++)
            {
                dot += q[(r * hidden) + c] * k[at + c];
            }

            float s = dot / temperature;
            p[(r * adapters) + i] = s;
            max = MathF.Max(max, s);
        }

        float sum = 0f;
        for (int i = 0; i < adapters; i++)
        {
            float e = MathF.Exp(p[(r * adapters) + i] - max);
            p[(r * adapters) + i] = e;
            sum += e;
        }

        for (int i = 0; i < adapters; i++)
        {
            p[(r * adapters) + i] /= sum;
        }
    }

    internal static void MixKernel(Index1D idx, FloatView v, FloatView p, FloatView y, int n, int hidden, int adapters)
    {
        int r = idx / hidden, c = idx - (r * hidden);
        float sum = 0f;
        for (int i = 0; i < adapters; i++)
        {
            sum += p[(r * adapters) + i] * v[(((i * n) + r) * hidden) + c];
        }

        y[idx] = sum;
    }

    internal static void DsKernel(Index1D r, FloatView g, FloatView v, FloatView p, FloatView ds, int n, int hidden, int adapters, float temperature)
    {
        float weighted = 0f;
        for (int i = 0; i < adapters; i++)
        {
            float dot = 0f;
            int at = ((i * n) + r) * hidden;
            for (int c = 0; c < hidden; c++)
            {
                dot += g[(r * hidden) + c] * v[at + c];
            }

            ds[(r * adapters) + i] = dot;
            weighted += p[(r * adapters) + i] * dot;
        }

        for (int i = 0; i < adapters; i++)
        {
            int at = (r * adapters) + i;
            ds[at] = p[at] * (ds[at] - weighted) / temperature;
        }
    }

    internal static void GradsKernel(Index1D idx, FloatView g, FloatView q, FloatView k, FloatView p, FloatView ds,
        FloatView dq, FloatView dk, FloatView dv, int n, int hidden, int adapters)
    {
        int r = idx / hidden, c = idx - (r * hidden);
        float sum = 0f, qc = q[idx], gc = g[idx];
        for (int i = 0; i < adapters; i++)
        {
            float dsi = ds[(r * adapters) + i];
            int at = (((i * n) + r) * hidden) + c;
            sum += dsi * k[at];
            dk[at] = dsi * qc;
            dv[at] = p[(r * adapters) + i] * gc;
        }

        dq[idx] = sum;
    }

    internal static void RegularizationKernel(FloatView v, FloatView result, int d)
    {
        var scratch = SharedMemory.Allocate<float>(GpuMath.WarpSize);
        float sum = 0f;
        for (int i = Group.IdxX; i < d * d; i += Group.DimX)
        {
            int a = i / d;
            float e = (i == (a * d) + a ? 1f : 0f) - v[i];
            sum += e * e;
        }

        float total = GpuMath.GroupSum(sum, scratch);
        if (Group.IdxX == 0)
        {
            result[0] = total;
        }
    }

    internal static void RegularizationBackwardKernel(Index1D i, FloatView v, FloatView dv, float g, int d)
    {
        int a = i / d;
        dv[i] = 2f * g * (v[i] - (i == (a * d) + a ? 1f : 0f));
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int, int, int, float> Probs;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int, int, int> Mix;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, FloatView, int, int, int, float> Ds;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, int, int, int> Grads;
        public readonly Action<KernelConfig, FloatView, FloatView, int> Regularization;
        public readonly Action<Index1D, FloatView, FloatView, float, int> RegularizationBackward;

        private Loaded(Accelerator a)
        {
            Probs = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int, int, int, float>(ProbsKernel);
            Mix = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int, int, int>(MixKernel);
            Ds = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, FloatView, int, int, int, float>(DsKernel);
            Grads = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, int, int, int>(GradsKernel);
            Regularization = a.LoadStreamKernel<FloatView, FloatView, int>(RegularizationKernel);
            RegularizationBackward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, float, int>(RegularizationBackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
