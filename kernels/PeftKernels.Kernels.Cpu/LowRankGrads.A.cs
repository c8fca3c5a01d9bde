// The LoRA backward's third rank-sized product, the gradient of A (row-major):
//   dh [m, r], u [m, in] (the forward's drop(x), here x itself: no dropout):
//   dA [r, in] = dhᵀ · u        dA[c, j] = Σ_i dh[i, c] · u[i, j]   (summed over i in order)
// Why not the GEMM: it packs all of u (m × in floats, as large as x) for an M of r = 16, whose 12-row
// strips leave a third of the last one empty. Here u's rows are read where they lie: a tile of 4 rows of
// dA by 2 vectors of columns keeps 8 accumulators in registers while m rows of u stream past (2 loads
// and 4 broadcasts of dh per 8 FMAs); the tails (r mod 4, columns past the last 2-vector block) go one
// row by one vector, the last columns one lane at a time.
// Threads take fixed units of UnitColumns columns. Every element is one FMA chain over i whatever the
// tile, and a unit's tiling never depends on the split, so the results are bit-identical for any
// thread count on a given SIMD path.
namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class LowRankGrads
{
    /// <summary>Columns per unit of work handed to a thread (a multiple of every path's 2-vector block).</summary>
    internal const int UnitColumns = 64;

    /// <summary>dA = dhᵀ·u [r, in], overwritten, on <see cref="KernelOptions.Threads"/> threads; bit-identical for every thread count.</summary>
    /// <param name="dh">dh [m, r].</param>
    /// <param name="u">The rows the forward multiplied by Aᵀ [m, in].</param>
    /// <param name="da">Output dA [r, in].</param>
    /// <param name="m">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="rank">r.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A dim is out of range or a span's length differs from what the dims imply.</exception>
    public static void ComputeA(ReadOnlySpan<float> dh, ReadOnlySpan<float> u, Span<float> da, int m, int inFeatures, int rank, KernelOptions options)
    {
        if (m < 0 || inFeatures <= 0 || rank <= 0)
        {
            throw new ArgumentException($"low-rank dA: m = {m}, in = {inFeatures}, r = {rank} (need m ≥ 0, in ≥ 1, r ≥ 1).", nameof(m));
        }

        if (dh.Length != (long)m * rank || u.Length != (long)m * inFeatures || da.Length != (long)rank * inFeatures)
        {
            throw new ArgumentException($"low-rank dA: dh {dh.Length}, u {u.Length}, dA {da.Length} floats; "
                + $"m = {m}, in = {inFeatures}, r = {rank} need dh [m, r], u [m, in], dA [r, in].", nameof(dh));
        }

        var path = options.ResolvePath();
        int units = (inFeatures + UnitColumns - 1) / UnitColumns;
        int parts = Math.Min(options.ResolveThreads(), units);
        fixed (float* pdh = dh, pu = u, pda = da)
        {
            nint adh = (nint)pdh, au = (nint)pu, ada = (nint)pda;
            CpuParallel.For(parts, parts, part =>
            {
                var (first, end) = CpuParallel.Split(units, parts, part);
                int j0 = first * UnitColumns, j1 = Math.Min(end * UnitColumns, inFeatures);
                float* d = (float*)adh, x = (float*)au, a = (float*)ada;
                int j = j0;
                if (path == SimdPath.Vector512)
                {
                    j = ColumnsA<System.Runtime.Intrinsics.Vector512<float>, V512>(d, x, a, m, inFeatures, rank, j0, j1);
                }
                else if (path == SimdPath.Vector256)
                {
                    j = ColumnsA<System.Runtime.Intrinsics.Vector256<float>, V256>(d, x, a, m, inFeatures, rank, j0, j1);
                }

                ColumnsA<float, V1>(d, x, a, m, inFeatures, rank, j, j1);
            });
        }
    }

    /// <summary>Columns [j0, j1) of dA in whole vectors of <typeparamref name="T"/>; returns the first column not done.</summary>
    private static int ColumnsA<TV, T>(float* dh, float* u, float* da, int m, int inF, int r, int j0, int j1)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, j = j0;
        for (; j + (2 * w) <= j1; j += 2 * w)
        {
            int c = 0;
            for (; c + 4 <= r; c += 4)
            {
                Tile4x2<TV, T>(dh + c, u + j, da + ((long)c * inF) + j, m, inF, r);
            }

            for (; c < r; c++)
            {
                Tile1x1<TV, T>(dh + c, u + j, da + ((long)c * inF) + j, m, inF, r);
                Tile1x1<TV, T>(dh + c, u + j + w, da + ((long)c * inF) + j + w, m, inF, r);
            }
        }

        for (; j + w <= j1; j += w)
        {
            for (int c = 0; c < r; c++)
            {
                Tile1x1<TV, T>(dh + c, u + j, da + ((long)c * inF) + j, m, inF, r);
            }
        }

        return j;
    }

    /// <summary>dA rows c..c+3 (dh + c) by two vectors of columns (u + j, da + c·in + j).</summary>
    private static void Tile4x2<TV, T>(float* dh, float* u, float* da, int m, int inF, int r)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width;
        TV a00 = T.Splat(0f), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        for (int i = 0; i < m; i++)
        {
            float* ui = u + ((long)i * inF), di = dh + ((long)i * r);
            TV x0 = T.Load(ui), x1 = T.Load(ui + w);
            TV d = T.Splat(di[0]);
            a00 = T.Fma(d, x0, a00);
            a01 = T.Fma(d, x1, a01);
            d = T.Splat(di[1]);
            a10 = T.Fma(d, x0, a10);
            a11 = T.Fma(d, x1, a11);
            d = T.Splat(di[2]);
            a20 = T.Fma(d, x0, a20);
            a21 = T.Fma(d, x1, a21);
            d = T.Splat(di[3]);
            a30 = T.Fma(d, x0, a30);
            a31 = T.Fma(d, x1, a31);
        }

        T.Store(da, a00);
        T.Store(da + w, a01);
        T.Store(da + inF, a10);
        T.Store(da + inF + w, a11);
        T.Store(da + (2L * inF), a20);
        T.Store(da + (2L * inF) + w, a21);
        T.Store(da + (3L * inF), a30);
        T.Store(da + (3L * inF) + w, a31);
    }

    /// <summary>dA row c (dh + c) by one vector of columns.</summary>
    private static void Tile1x1<TV, T>(float* dh, float* u, float* da, int m, int inF, int r)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        TV a = T.Splat(0f);
        for (int i = 0; i < m; i++)
        {
            a = T.Fma(T.Splat(dh[(long)i * r]), T.Load(u + ((long)i * inF)), a);
        }

        T.Store(da, a);
    }
}
