// IA³ scaling of the columns of a row-major matrix by a learned vector. Shapes: x, y, dy, dx
// [n, features]; l, dl [features].
//   Forward:  y[i, j] = x[i, j] · l[j]
//   Backward, g = dL/dy (chain rule through the product):
//     dx[i, j] = g[i, j] · l[j]
//     dl[j]    = Σ_i g[i, j] · x[i, j]
// One pair serves every IA³ use (docs/formats/methods.md#column-scaling): output scaling (x = x·Wᵀ + b, features = out),
// input scaling (x = the layer input, features = in, then the frozen linear) and DoRA's
// (m / norm) output scaling (x = x·Wᵀ + s·x·Aᵀ·Bᵀ). The chain rule through the linear around
// it belongs to the caller.
// dl is deterministic for any thread count: the rows are cut into fixed chunks of RowsPerChunk,
// each chunk sums its rows in order into its own partial row, and the partial rows are added
// in chunk order afterwards.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>IA³ column scaling y = x ⊙ l (l broadcast over rows), forward and backward on the CPU.</summary>
public static unsafe class Ia3
{
    private const int RowsPerChunk = 32;
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>y[i, j] = x[i, j] · l[j].</summary>
    /// <param name="x">Input [n, features].</param>
    /// <param name="l">Scale vector [features].</param>
    /// <param name="y">Output [n, features]. May be the very same memory as <paramref name="x"/> (in place);
    /// must not overlap it partially.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="features">Row length.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply, or a dim is out of range.</exception>
    public static void ScaleColumns(ReadOnlySpan<float> x, ReadOnlySpan<float> l, Span<float> y, int n, int features,
        KernelOptions options = default)
    {
        Ia3Shapes.ScaleColumns(x.Length, l.Length, y.Length, n, features);
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        if (n == 0)
        {
            return;
        }

        int parts = (long)n * features < ParallelThreshold ? 1 : Math.Min(threads, n);
        fixed (float* px = x, pl = l, py = y)
        {
            float* xs = px, ls = pl, ys = py;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(n, parts, part);
                for (int i = i0; i < i1; i++)
                {
                    long row = (long)i * features;
                    MultiplyRow(xs + row, ls, ys + row, features, path);
                }
            });
        }
    }

    /// <summary>dx = dy ⊙ l and dl[j] = Σ_i dy[i, j]·x[i, j]; either output may be empty to skip it.</summary>
    /// <param name="dy">Gradient of the output [n, features].</param>
    /// <param name="x">The forward input [n, features]; may be empty when <paramref name="dl"/> is empty.</param>
    /// <param name="l">Scale vector [features].</param>
    /// <param name="dx">Output [n, features], or empty to skip. May be the very same memory as
    /// <paramref name="dy"/>; must not overlap <paramref name="x"/>.</param>
    /// <param name="dl">Output [features] (overwritten with the sum over rows), or empty to skip (frozen l).
    /// Bit-identical for any thread count.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="features">Row length.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply, or a dim is out of range.</exception>
    public static void ScaleColumnsBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> l,
        Span<float> dx, Span<float> dl, int n, int features, KernelOptions options = default)
    {
        Ia3Shapes.ScaleColumnsBackward(dy.Length, x.Length, l.Length, dx.Length, dl.Length, n, features);

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        bool wantDx = dx.Length != 0, wantDl = dl.Length != 0;
        if (n == 0)
        {
            dl.Clear(); // an empty sum
            return;
        }

        if (!wantDx && !wantDl)
        {
            return;
        }

        int chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
        int parts = (long)n * features < ParallelThreshold ? 1 : Math.Min(threads, chunks);
        float[] partials = wantDl && chunks > 1 ? new float[(long)chunks * features] : [];
        fixed (float* pdy = dy, px = x, pl = l, pdx = dx, pdl = dl, pp = partials)
        {
            float* dys = pdy, xs = px, ls = pl, dxs = pdx, dls = pdl, acc = chunks > 1 ? pp : pdl;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (c0, c1) = CpuParallel.Split(chunks, parts, part);
                for (int c = c0; c < c1; c++)
                {
                    int i0 = c * RowsPerChunk, i1 = Math.Min(n, i0 + RowsPerChunk);
                    float* chunkAcc = acc + ((long)c * features);
                    if (wantDl)
                    {
                        new Span<float>(chunkAcc, features).Clear();
                    }

                    for (int i = i0; i < i1; i++)
                    {
                        long row = (long)i * features;
                        if (wantDl && wantDx)
                        {
                            BackwardRow(dys + row, xs + row, ls, dxs + row, chunkAcc, features, path);
                        }
                        else if (wantDl)
                        {
                            ProductAddRow(dys + row, xs + row, chunkAcc, features, path);
                        }
                        else
                        {
                            MultiplyRow(dys + row, ls, dxs + row, features, path);
                        }
                    }
                }
            });

            if (wantDl && chunks > 1)
            {
                int reduceParts = parts == 1 ? 1 : Math.Min(threads, Math.Max(1, features / 256));
                CpuParallel.For(reduceParts, threads, (part) =>
                {
                    var (j0, j1) = CpuParallel.Split(features, reduceParts, part);
                    for (int j = j0; j < j1; j++)
                    {
                        float sum = acc[j];
                        for (int k = 1; k < chunks; k++)
                        {
                            sum += acc[((long)k * features) + j];
                        }

                        dls[j] = sum;
                    }
                });
            }
        }
    }

    /// <summary>y = x ⊙ l (y may equal x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MultiplyRow(float* x, float* l, float* y, int count, SimdPath path)
    {
        int j = 0;
        if (path == SimdPath.Vector512)
        {
            for (; j <= count - 16; j += 16)
            {
                (Vector512.Load(x + j) * Vector512.Load(l + j)).Store(y + j);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            for (; j <= count - 8; j += 8)
            {
                (Vector256.Load(x + j) * Vector256.Load(l + j)).Store(y + j);
            }
        }

        for (; j < count; j++)
        {
            y[j] = x[j] * l[j];
        }
    }

    /// <summary>acc += g ⊙ x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ProductAddRow(float* g, float* x, float* acc, int count, SimdPath path)
    {
        int j = 0;
        if (path == SimdPath.Vector512)
        {
            for (; j <= count - 16; j += 16)
            {
                Vector512.FusedMultiplyAdd(Vector512.Load(g + j), Vector512.Load(x + j), Vector512.Load(acc + j)).Store(acc + j);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            for (; j <= count - 8; j += 8)
            {
                Vector256.FusedMultiplyAdd(Vector256.Load(g + j), Vector256.Load(x + j), Vector256.Load(acc + j)).Store(acc + j);
            }
        }

        for (; j < count; j++)
        {
            acc[j] += g[j] * x[j];
        }
    }

    /// <summary>acc += g ⊙ x and dx = g ⊙ l in one pass; each g is read before dx is written, so dx may equal g.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardRow(float* g, float* x, float* l, float* dx, float* acc, int count, SimdPath path)
    {
        int j = 0;
        if (path == SimdPath.Vector512)
        {
            for (; j <= count - 16; j += 16)
            {
                var gv = Vector512.Load(g + j);
                Vector512.FusedMultiplyAdd(gv, Vector512.Load(x + j), Vector512.Load(acc + j)).Store(acc + j);
                (gv * Vector512.Load(l + j)).Store(dx + j);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            for (; j <= count - 8; j += 8)
            {
                var gv = Vector256.Load(g + j);
                Vector256.FusedMultiplyAdd(gv, Vector256.Load(x + j), Vector256.Load(acc + j)).Store(acc + j);
                (gv * Vector256.Load(l + j)).Store(dx + j);
            }
        }

        for (; j < count; j++)
        {
            float gj = g[j];
            acc[j] += gj * x[j];
            dx[j] = gj * l[j];
        }
    }
}
