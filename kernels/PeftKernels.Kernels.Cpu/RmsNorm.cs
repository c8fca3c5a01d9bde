// RMSNorm (HF LlamaRMSNorm, fp32). Shapes, row-major: x, y, dy, dx [n, dim]; weight, dweight [dim];
// rstd [n] (kept from the forward for the backward).
// Forward, per row i:
//   rstd_i = 1 / sqrt(mean_j(x_ij²) + eps)     sum of squares accumulated in fp32 vector lanes (16 or 8
//                                               lanes, two accumulators), like torch's fp32 mean
//   y_ij   = w_j · (x_ij · rstd_i)              HF's order: normalise, then scale
// Backward, g = dL/dy, ĝ = w ⊙ g (chain rule through y = w ⊙ x̂, x̂ = x·rstd, rstd = (mean(x²) + eps)^(-1/2),
// ∂rstd/∂x_j = −rstd³·x_j/dim):
//   dx_i = rstd_i·ĝ_i − x_i·rstd_i³·mean_j(ĝ_ij·x_ij) = rstd_i·(ĝ_i − x_i·c_i),  c_i = rstd_i²·Σ_j ĝ_ij·x_ij / dim
//   dw_j = Σ_i g_ij · x_ij · rstd_i
// dw is deterministic for any thread count: the rows are cut into fixed chunks of RowsPerChunk, each
// chunk sums its rows in order into its own partial row, and the partial rows are added in chunk order.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>RMS normalisation (Llama's RMSNorm) forward and backward on the CPU.</summary>
public static unsafe class RmsNorm
{
    private const int RowsPerChunk = 32;
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>y = weight ⊙ (x · rstd) per row, with rstd = 1/sqrt(mean(x²) + eps) written to <paramref name="rstd"/>.</summary>
    /// <param name="x">Input [n, dim].</param>
    /// <param name="weight">Scale [dim].</param>
    /// <param name="eps">Added to the mean square, ≥ 0.</param>
    /// <param name="y">Output [n, dim].</param>
    /// <param name="rstd">Output [n]: the reciprocal RMS of each row, needed by <see cref="Backward"/>.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="dim">Row length.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y, Span<float> rstd,
        int n, int dim, KernelOptions options = default)
    {
        RmsNormShapes.Forward(x.Length, weight.Length, y.Length, rstd.Length, n, dim, eps);
        if (n == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = (long)n * dim < ParallelThreshold ? 1 : Math.Min(threads, n);
        fixed (float* px = x, pw = weight, py = y, pr = rstd)
        {
            float* xs = px, ws = pw, ys = py, rs = pr;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(n, parts, part);
                for (int i = i0; i < i1; i++)
                {
                    long row = (long)i * dim;
                    float r = 1f / MathF.Sqrt((SumOfSquares(xs + row, dim, path) / dim) + eps);
                    rs[i] = r;
                    NormaliseRow(xs + row, ws, r, ys + row, dim, path);
                }
            });
        }
    }

    /// <summary>dx and dweight from dy, the forward input and the forward's rstd.</summary>
    /// <param name="dy">Gradient of the output [n, dim].</param>
    /// <param name="x">Forward input [n, dim].</param>
    /// <param name="weight">Scale [dim].</param>
    /// <param name="rstd">The <see cref="Forward"/> output rstd [n].</param>
    /// <param name="dx">Output [n, dim], or empty to skip.</param>
    /// <param name="dweight">Output [dim] (overwritten with Σ over rows), or empty to skip (frozen norm).
    /// Bit-identical for any thread count.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="dim">Row length.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<float> rstd,
        Span<float> dx, Span<float> dweight, int n, int dim, KernelOptions options = default)
    {
        RmsNormShapes.Backward(dy.Length, x.Length, weight.Length, rstd.Length, dx.Length, dweight.Length, n, dim);

        bool wantDx = dx.Length != 0, wantDw = dweight.Length != 0;
        if (!wantDx && !wantDw)
        {
            return;
        }

        if (n == 0)
        {
            dweight.Clear(); // an empty sum
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
        int parts = (long)n * dim < ParallelThreshold ? 1 : Math.Min(threads, chunks);
        float[] partials = wantDw && chunks > 1 ? new float[(long)chunks * dim] : [];
        fixed (float* pdy = dy, px = x, pw = weight, pr = rstd, pdx = dx, pdw = dweight, pp = partials)
        {
            float* dys = pdy, xs = px, ws = pw, rs = pr, dxs = pdx, dws = pdw, acc = chunks > 1 ? pp : pdw;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (c0, c1) = CpuParallel.Split(chunks, parts, part);
                for (int c = c0; c < c1; c++)
                {
                    int i0 = c * RowsPerChunk, i1 = Math.Min(n, i0 + RowsPerChunk);
                    float* chunkAcc = acc + ((long)c * dim);
                    if (wantDw)
                    {
                        new Span<float>(chunkAcc, dim).Clear();
                    }

                    for (int i = i0; i < i1; i++)
                    {
                        long row = (long)i * dim;
                        float r = rs[i];
                        if (wantDx)
                        {
                            float dot = WeightedDot(ws, dys + row, xs + row, dim, path);
                            DxRow(ws, dys + row, xs + row, r, r * r * dot / dim, dxs + row, dim, path);
                        }

                        if (wantDw)
                        {
                            DwRowAdd(dys + row, xs + row, r, chunkAcc, dim, path);
                        }
                    }
                }
            });

            if (wantDw && chunks > 1)
            {
                int reduceParts = parts == 1 ? 1 : Math.Min(threads, Math.Max(1, dim / 256));
                CpuParallel.For(reduceParts, threads, (part) =>
                {
                    var (j0, j1) = CpuParallel.Split(dim, reduceParts, part);
                    for (int j = j0; j < j1; j++)
                    {
                        float sum = acc[j];
                        for (int c = 1; c < chunks; c++)
                        {
                            sum += acc[((long)c * dim) + j];
                        }

                        dws[j] = sum;
                    }
                });
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float SumOfSquares(float* x, int count, SimdPath path)
    {
        int j = 0;
        float sum = 0;
        if (path == SimdPath.Vector512)
        {
            sum = SumOfSquares<Vector512<float>, V512>(x, count, out j);
        }
        else if (path == SimdPath.Vector256)
        {
            sum = SumOfSquares<Vector256<float>, V256>(x, count, out j);
        }

        for (; j < count; j++)
        {
            sum += x[j] * x[j];
        }

        return sum;
    }

    /// <summary>Σ x² over the whole vectors of x (two accumulators), and where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float SumOfSquares<TV, T>(float* x, int count, out int end)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, j = 0;
        TV a0 = default, a1 = default;
        for (; j <= count - (2 * w); j += 2 * w)
        {
            var v0 = T.Load(x + j);
            var v1 = T.Load(x + j + w);
            a0 = T.Fma(v0, v0, a0);
            a1 = T.Fma(v1, v1, a1);
        }

        for (; j <= count - w; j += w)
        {
            var v0 = T.Load(x + j);
            a0 = T.Fma(v0, v0, a0);
        }

        end = j;
        return T.Sum(T.Add(a0, a1));
    }

    /// <summary>y = w ⊙ (x · r).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void NormaliseRow(float* x, float* w, float r, float* y, int count, SimdPath path)
    {
        int j = path switch
        {
            SimdPath.Vector512 => NormaliseRow<Vector512<float>, V512>(x, w, r, y, count),
            SimdPath.Vector256 => NormaliseRow<Vector256<float>, V256>(x, w, r, y, count),
            _ => 0,
        };

        for (; j < count; j++)
        {
            y[j] = w[j] * (x[j] * r);
        }
    }

    /// <summary>y = w ⊙ (x · r) over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int NormaliseRow<TV, T>(float* x, float* w, float r, float* y, int count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int wd = T.Width, j = 0;
        var rv = T.Splat(r);
        for (; j <= count - wd; j += wd)
        {
            T.Store(y + j, T.Mul(T.Load(w + j), T.Mul(T.Load(x + j), rv)));
        }

        return j;
    }

    /// <summary>Σ_j (w_j·g_j)·x_j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float WeightedDot(float* w, float* g, float* x, int count, SimdPath path)
    {
        int j = 0;
        float sum = 0;
        if (path == SimdPath.Vector512)
        {
            sum = WeightedDot<Vector512<float>, V512>(w, g, x, count, out j);
        }
        else if (path == SimdPath.Vector256)
        {
            sum = WeightedDot<Vector256<float>, V256>(w, g, x, count, out j);
        }

        for (; j < count; j++)
        {
            sum += w[j] * g[j] * x[j];
        }

        return sum;
    }

    /// <summary>Σ (w·g)·x over the whole vectors (two accumulators), and where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float WeightedDot<TV, T>(float* w, float* g, float* x, int count, out int end)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int wd = T.Width, j = 0;
        TV a0 = default, a1 = default;
        for (; j <= count - (2 * wd); j += 2 * wd)
        {
            a0 = T.Fma(T.Mul(T.Load(w + j), T.Load(g + j)), T.Load(x + j), a0);
            a1 = T.Fma(T.Mul(T.Load(w + j + wd), T.Load(g + j + wd)), T.Load(x + j + wd), a1);
        }

        for (; j <= count - wd; j += wd)
        {
            a0 = T.Fma(T.Mul(T.Load(w + j), T.Load(g + j)), T.Load(x + j), a0);
        }

        end = j;
        return T.Sum(T.Add(a0, a1));
    }

    /// <summary>dx = r·(w ⊙ g − x·c).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DxRow(float* w, float* g, float* x, float r, float c, float* dx, int count, SimdPath path)
    {
        int j = path switch
        {
            SimdPath.Vector512 => DxRow<Vector512<float>, V512>(w, g, x, r, c, dx, count),
            SimdPath.Vector256 => DxRow<Vector256<float>, V256>(w, g, x, r, c, dx, count),
            _ => 0,
        };

        for (; j < count; j++)
        {
            dx[j] = r * ((w[j] * g[j]) - (x[j] * c));
        }
    }

    /// <summary>dx = r·(w ⊙ g − x·c) over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int DxRow<TV, T>(float* w, float* g, float* x, float r, float c, float* dx, int count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int wd = T.Width, j = 0;
        TV rv = T.Splat(r), cv = T.Splat(c);
        for (; j <= count - wd; j += wd)
        {
            T.Store(dx + j, T.Mul(rv, T.Sub(T.Mul(T.Load(w + j), T.Load(g + j)), T.Mul(T.Load(x + j), cv))));
        }

        return j;
    }

    /// <summary>acc += g ⊙ (x · r).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DwRowAdd(float* g, float* x, float r, float* acc, int count, SimdPath path)
    {
        int j = path switch
        {
            SimdPath.Vector512 => DwRowAdd<Vector512<float>, V512>(g, x, r, acc, count),
            SimdPath.Vector256 => DwRowAdd<Vector256<float>, V256>(g, x, r, acc, count),
            _ => 0,
        };

        for (; j < count; j++)
        {
            acc[j] += g[j] * (x[j] * r);
        }
    }

    /// <summary>acc += g ⊙ (x · r) over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int DwRowAdd<TV, T>(float* g, float* x, float r, float* acc, int count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int wd = T.Width, j = 0;
        var rv = T.Splat(r);
        for (; j <= count - wd; j += wd)
        {
            T.Store(acc + j, T.Fma(T.Load(g + j), T.Mul(T.Load(x + j), rv), T.Load(acc + j)));
        }

        return j;
    }
}
