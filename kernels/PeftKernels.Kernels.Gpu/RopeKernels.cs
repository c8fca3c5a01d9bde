// Rotary position embedding, rotate-half convention (HF Llama), on the GPU (Rope.cs). Shapes,
// row-major: x, y, dy, dx [n, heads, headDim]; positions [n]; invFreq [headDim/2]. With h = headDim/2,
// for every token t, head and j < h:
//   a = (float)pos_t · invFreq_j          fp32 multiply, as torch computes the angle
//   c = (float)cos a, s = (float)sin a    in double, rounded once (as the CPU kernel)
//   y_j = x_j·c − x_{j+h}·s,   y_{j+h} = x_{j+h}·c + x_j·s
// Backward: dx = Rᵀ·dy, the same rotation with s negated. One thread per (t, j) computes c, s once
// and rotates that pair in every head; each pair is read before it is written, so y may be x
// itself (in place).
namespace PeftKernels.Kernels.Gpu;

/// <summary>Rotary position embedding (rotate-half) forward and backward on an ILGPU accelerator.</summary>
public static class RopeKernels
{
    /// <summary>y = RoPE(x); <paramref name="y"/> may be <paramref name="x"/> itself (in place). Positions must be ≥ 0 (not checked on the device).</summary>
    public static void Forward(Accelerator accelerator, FloatView x, IntView positions, FloatView invFreq, FloatView y,
        int n, int heads, int headDim) =>
        Rotate(accelerator, x, positions, invFreq, y, n, heads, headDim, 1f, "x", "y");

    /// <summary>dx = Rᵀ·dy, the transpose rotation of <see cref="Forward"/>; <paramref name="dx"/> may be <paramref name="dy"/> itself.</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, IntView positions, FloatView invFreq, FloatView dx,
        int n, int heads, int headDim) =>
        Rotate(accelerator, dy, positions, invFreq, dx, n, heads, headDim, -1f, "dy", "dx");

    internal static void RotateKernel(Index1D index, FloatView src, IntView positions, FloatView invFreq, FloatView dst, Dims d)
    {
        int half = d.HeadDim / 2, t = index / half, j = index - (t * half);
        float angle = (float)positions[t] * invFreq[j];
        float c = (float)Math.Cos(angle), s = d.SinSign * (float)Math.Sin(angle);
        int at = (t * d.Heads * d.HeadDim) + j;
        for (int h = 0; h < d.Heads; h++)
        {
            float a = src[at], b = src[at + half];
            dst[at] = (a * c) - (b * s);
            dst[at + half] = (b * c) + (a * s);
            at += d.HeadDim;
        }
    }

    private static void Rotate(Accelerator accelerator, FloatView src, IntView positions, FloatView invFreq, FloatView dst,
        int n, int heads, int headDim, float sinSign, string srcName, string dstName)
    {
        GpuCheck.NotNull(accelerator);
        RopeShapes.Rotate(srcName, src.Length, positions.Length, invFreq.Length, dstName, dst.Length, n, heads, headDim);
        long total = (long)n * heads * headDim;
        GpuCheck.FitsInt(total, srcName);
        if (n == 0)
        {
            return;
        }

        GpuKernelCache.Get(accelerator, static a => new Loaded(a)).Rotate(n * (headDim / 2), src, positions, invFreq, dst, new Dims(heads, headDim, sinSign));
    }

    internal readonly record struct Dims(int Heads, int HeadDim, float SinSign);

    private sealed class Loaded(Accelerator accelerator)
    {
        public readonly Action<Index1D, FloatView, IntView, FloatView, FloatView, Dims> Rotate =
            accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, FloatView, Dims>(RotateKernel);
    }
}
