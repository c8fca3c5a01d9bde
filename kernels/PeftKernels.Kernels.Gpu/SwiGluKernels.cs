// SwiGLU gate of the Llama MLP on the GPU, element-wise over views of one length (SwiGlu.cs):
//   σ(z) = 1 / (1 + exp(−z)),   silu(z) = z·σ(z),   y = silu(gate) ⊙ up
// Backward, g = dL/dy (silu'(z) = σ(z)·(1 + z·(1 − σ(z)))):
//   dgate = g ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate)))
//   dup   = g ⊙ silu(gate)
// The same selects as the CPU kernel keep ±∞ inputs from producing 0·∞ = NaN. exp is the device's
// expf (CUDA libdevice, within 2 ulp; .NET MathF.Exp on the CPU accelerator), so results agree with
// the CPU kernel to a few ulp, not bit for bit.
namespace PeftKernels.Kernels.Gpu;

/// <summary>SwiGLU (silu(gate) ⊙ up) forward and backward on an ILGPU accelerator.</summary>
public static class SwiGluKernels
{
    /// <summary>y = silu(gate) ⊙ up, element-wise; all views have one length.</summary>
    public static void Forward(Accelerator accelerator, FloatView gate, FloatView up, FloatView y)
    {
        GpuCheck.NotNull(accelerator);
        long count = gate.Length;
        SwiGluShapes.Forward(count, up.Length, y.Length);
        GpuCheck.FitsInt(count, nameof(gate));
        if (count != 0)
        {
            Loaded.For(accelerator).Forward((int)count, gate, up, y);
        }
    }

    /// <summary>dgate = dy ⊙ up ⊙ silu'(gate) and dup = dy ⊙ silu(gate), element-wise; all views have one length.</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView gate, FloatView up, FloatView dgate, FloatView dup)
    {
        GpuCheck.NotNull(accelerator);
        long count = dy.Length;
        SwiGluShapes.Backward(count, gate.Length, up.Length, dgate.Length, dup.Length);
        GpuCheck.FitsInt(count, nameof(dy));
        if (count != 0)
        {
            Loaded.For(accelerator).Backward((int)count, dy, gate, up, dgate, dup);
        }
    }

    internal static void ForwardKernel(Index1D i, FloatView gate, FloatView up, FloatView y)
    {
        float z = gate[i];
        float s = 1f / (1f + MathF.Exp(-z));
        y[i] = (s == 0f ? 0f : z * s) * up[i];
    }

    internal static void BackwardKernel(Index1D i, FloatView dy, FloatView gate, FloatView up, FloatView dgate, FloatView dup)
    {
        float z = gate[i], g = dy[i];
        float s = 1f / (1f + MathF.Exp(-z));
        float q = 1f - s;
        float silu = s == 0f ? 0f : z * s;
        float dsilu = s == 0f ? 0f : s * (1f + (q == 0f ? 0f : z * q));
        dgate[i] = g * up[i] * dsilu;
        dup[i] = g * silu;
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView> Forward;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, FloatView, FloatView> Backward;

        private Loaded(Accelerator accelerator)
        {
            Forward = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView>(ForwardKernel);
            Backward = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, FloatView, FloatView>(BackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
