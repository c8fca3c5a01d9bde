// The LoRA-branch dropout, materialised (the mask of DropoutMask / DropoutReference; index =
// storage offset of x, so the mask of row i, column j of an [n, in] input is keep(seed, i·in + j)):
//   y[i] = keep(seed, i) ? x[i] / (1 − p) : 0
// Backward is the same map applied to the gradient: d drop(x)[i] / dx[i] = keep ? 1/(1 − p) : 0,
// so dx = Apply(dy) with the same p and seed.
// The fused LoRA kernel never materialises drop(x); this is for branches that cannot go through
// it (a second active adapter on one layer, rows gathered per adapter). Scalar only: the mask
// is a 64-bit hash per element (three 64-bit multiplies, no vector form on AVX2), and the call
// sits next to GEMMs doing r times its work, so it never shows in a profile.
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Seeded, index-addressed dropout (the LoRA branch mask) on the CPU.</summary>
public static unsafe class Dropout
{
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>y = drop(x): kept elements scaled by 1/(1 − p), dropped ones 0; p = 0 copies. Also the backward map. y may be x (in place: each element is read once, then written).</summary>
    /// <exception cref="ArgumentException">y's length differs from x's, or p is outside [0, 1).</exception>
    public static void Apply(ReadOnlySpan<float> x, Span<float> y, float p, ulong seed, KernelOptions options = default)
    {
        Check.Length("y", y.Length, x.Length, "x.Length");
        if (!(p >= 0f && p < 1f))
        {
            throw new ArgumentException($"dropout must be in [0, 1), got {p}.", nameof(p));
        }

        int count = x.Length;
        if (count == 0)
        {
            return;
        }

        if (p == 0f)
        {
            x.CopyTo(y);
            return;
        }

        int threads = options.ResolveThreads();
        int parts = count < ParallelThreshold ? 1 : Math.Min(threads, count / (ParallelThreshold / 2));
        var mask = new DropoutMask(p, seed);
        fixed (float* px = x, py = y)
        {
            float* xs = px, ys = py;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, part);
                for (int i = i0; i < i1; i++)
                {
                    ys[i] = mask.Apply(xs[i], i);
                }
            });
        }
    }
}
