// Blocked GEMM driver (BLIS loop order), C[m, n] = alpha · op(A) · op(B) + beta · C + bias:
//   for jc in N by NC:                       B panel shared by all threads (L3)
//     for pc in K by kc (≤ KC, multiples of 64): blocks never straddle the masked-epilogue split
//       pack op(B)[pc, jc] into NR-wide strips          (threads split the strips)
//       for ic in M by MC:                   A block private to a thread (L2)
//         pack op(A)[ic, pc] into MR-tall strips
//         for jr over NR strips:             B micro-panel stays in L1
//           for ir over MR strips: micro-kernel
// Work is handed to threads in fixed units (row blocks of whole MR strips, or groups of NR
// strips when M is short) taken from a shared counter, so a slower core takes fewer units.
// A unit's arithmetic does not depend on which thread runs it and every C element is summed
// in the same order, so results are bit-identical across runs and thread counts for one
// SIMD path (the tests check 1 vs 2 threads bit for bit).
// Small m (≤ 4) goes to a GEMV path that streams B once: dot products when op(B) columns
// are contiguous (x·Wᵀ), row axpys when op(B) rows are (g·W).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Cpu;

/// <summary>A write-back rule for K blocks at or past <see cref="KSplit"/>: C += alpha · mask ⊙ acc (the LoRA dx dropout).</summary>
internal readonly struct GemmEpilogue(int kSplit, DropoutMask mask, int maskLd)
{
    public readonly int KSplit = kSplit;
    public readonly DropoutMask Mask = mask;
    public readonly int MaskLd = maskLd;

    public bool Active => Mask.Active;
}

internal static unsafe partial class GemmDriver
{
    private const int KcMax = 512;
    private const int McStrips = 24;
    private const int NcMax = 4096;

    public static void Run<TA, TB>(SimdPath path, int threads, in TA a, in TB b, int m, int n, int k, float alpha,
        float beta, float* c, int ldc, float* bias, in GemmEpilogue epilogue = default)
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        switch (path)
        {
            case SimdPath.Vector512 when n <= Vector512NarrowKernel.NR:
                Run<Vector512NarrowKernel, TA, TB>(threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
            case SimdPath.Vector512:
                Run<Vector512Kernel, TA, TB>(threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
            case SimdPath.Vector256:
                Run<Vector256Kernel, TA, TB>(threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
            default:
                Run<ScalarKernel, TA, TB>(threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
        }
    }

    private static void Run<TK, TA, TB>(int threads, TA a, TB b, int m, int n, int k, float alpha, float beta,
        float* c, int ldc, float* bias, GemmEpilogue epilogue, WeightPanels weight = default)
        where TK : struct, IMicroKernel
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        if (m == 0 || n == 0)
        {
            return;
        }

        if (k == 0)
        {
            ScaleOnly(m, n, beta, c, ldc, bias);
            return;
        }

        if (m <= RowDot.MaxRows && b.CanDot && !epilogue.Active)
        {
            Gemv(TK.Path, threads, a, b, m, n, k, alpha, beta, c, ldc, bias);
            return;
        }

        if (m <= RowDot.MaxRows && b.CanAxpy)
        {
            GemvRows(TK.Path, threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
            return;
        }

        int mr = TK.MR, nr = TK.NR;
        // A frozen weight in op(B)'s first K1 rows (bf16 pair kernels only) gets K blocks of its own, so that they can be
        // kept packed across calls (WeightPanelCache); with dropout the epilogue's split is the same K1 (LoRA's dx).
        var blocks = KBlocks(k, epilogue.Active ? epilogue.KSplit : weight.K1, TK.KcMax);
        int kcMax = 0;
        foreach (var (_, len) in blocks)
        {
            kcMax = Math.Max(kcMax, len);
        }

        int ncMax = Math.Min(NcMax, n);
        int mStrips = (m + mr - 1) / mr;
        int mc = McStrips * mr;
        bool splitM = mStrips >= 2 * threads || (ncMax + nr - 1) / nr < threads;
        int workers = Math.Max(1, Math.Min(threads, splitM ? mStrips : (ncMax + nr - 1) / nr));

        long bFloats = (long)kcMax * ((ncMax + nr - 1) / nr) * nr;
        long aFloats = (long)kcMax * Math.Min(mc, mStrips * mr);
        float* bPack = (float*)NativeMemory.AlignedAlloc((nuint)(bFloats * sizeof(float)), 64);
        float* aPack = (float*)NativeMemory.AlignedAlloc((nuint)(aFloats * workers * sizeof(float)), 64);
        float* tiles = (float*)NativeMemory.AlignedAlloc((nuint)(mr * nr * workers * sizeof(float)), 64);
        try
        {
            for (int jc = 0; jc < n; jc += NcMax)
            {
                int nc = Math.Min(NcMax, n - jc);
                int nStrips = (nc + nr - 1) / nr;
                for (int bi = 0; bi < blocks.Length; bi++)
                {
                    var (p0, kc) = blocks[bi];
                    bool first = bi == 0;
                    bool masked = epilogue.Active && p0 >= epilogue.KSplit;
                    var job = new BlockJob<TK, TA, TB>
                    {
                        A = a,
                        B = b,
                        M = m,
                        Jc = jc,
                        Nc = nc,
                        NStrips = nStrips,
                        P0 = p0,
                        Kc = kc,
                        Alpha = alpha,
                        Beta = first ? beta : 1f,
                        Bias = first ? bias : null,
                        C = c,
                        Ldc = ldc,
                        BPack = bPack,
                        APack = aPack,
                        AStride = aFloats,
                        Tiles = tiles,
                        Workers = workers,
                        SplitM = splitM,
                        Mc = mc,
                        Masked = masked,
                        Epilogue = epilogue,
                    };
                    bool keep = weight.Cache != null && p0 + kc <= weight.K1;
                    long gen = 0;
                    uint[]? kept = keep ? weight.Cache!.Find(weight.Layout, nr, jc, p0, kc, out gen) : null;
                    long compact = (long)((kc + 1) / 2) * nr;
                    job.BPanel = kept != null ? WeightPanelCache.Address(kept) : bPack;
                    job.BStride = kept != null ? compact : (long)kc * nr;
                    if (kept == null)
                    {
                        CpuParallel.For(workers, threads, job.PackB);
                        if (keep)
                        {
                            Keep(weight, jc, p0, kc, nr, nStrips, bPack, compact, gen);
                        }
                    }

                    CpuParallel.For(workers, threads, job.Compute);
                    GC.KeepAlive(kept);
                }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(tiles);
            NativeMemory.AlignedFree(aPack);
            NativeMemory.AlignedFree(bPack);
        }
    }

    /// <summary>Copies the freshly packed pair strips of a weight's K block (stride kc·nr floats) into a kept panel (stride ⌈kc/2⌉·nr words).</summary>
    private static void Keep(in WeightPanels weight, int jc, int p0, int kc, int nr, int nStrips, float* bPack, long compact, long gen)
    {
        var panel = WeightPanelCache.NewPanel(compact * nStrips);
        float* dst = WeightPanelCache.Address(panel);
        for (int t = 0; t < nStrips; t++)
        {
            Buffer.MemoryCopy(bPack + ((long)t * kc * nr), dst + (t * compact), compact * sizeof(uint), compact * sizeof(uint));
        }

        weight.Cache!.Add(weight.Layout, nr, jc, p0, kc, panel, gen);
    }

    /// <summary>K blocks of near-equal length ≤ KcMax; with a split, no block crosses it.</summary>
    internal static (int P0, int Len)[] KBlocks(int k, int split, int kcMax = KcMax)
    {
        if (split <= 0 || split >= k)
        {
            return Balanced(0, k, kcMax);
        }

        return [.. Balanced(0, split, kcMax), .. Balanced(split, k - split, kcMax)];
    }

    /// <summary>
    /// Near-equal blocks rounded up to a multiple of 64 (so panels start on 4-bit block and
    /// vector boundaries), the remainder last: K = 4096 + 16 gives 8 × 512 and one 16.
    /// </summary>
    private static (int, int)[] Balanced(int start, int length, int kcMax)
    {
        int count = (length + kcMax - 1) / kcMax;
        int size = Math.Min(kcMax, (((length + count - 1) / count) + 63) / 64 * 64);
        count = (length + size - 1) / size;
        var result = new (int, int)[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = (start + (i * size), Math.Min(size, length - (i * size)));
        }

        return result;
    }

    private static void ScaleOnly(int m, int n, float beta, float* c, int ldc, float* bias)
    {
        for (int i = 0; i < m; i++)
        {
            float* row = c + ((long)i * ldc);
            for (int j = 0; j < n; j++)
            {
                float v = beta == 0f ? 0f : beta * row[j];
                row[j] = bias == null ? v : v + bias[j];
            }
        }
    }

    private sealed class BlockJob<TK, TA, TB>
        where TK : struct, IMicroKernel
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        public TA A;
        public TB B;
        public int M, Jc, Nc, NStrips, P0, Kc, Ldc, Workers, Mc;
        public float Alpha, Beta;
        public float* Bias, C, BPack, APack, Tiles;

        /// <summary>The B strips the micro-kernel reads (BPack, or a kept weight panel) and their stride in floats.</summary>
        public float* BPanel;
        public long AStride, BStride;
        public bool SplitM, Masked;
        public GemmEpilogue Epilogue;
        private int nextPack, nextCompute;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void PackB(int worker)
        {
            int nr = TK.NR;
            const int group = 8;
            int units = (NStrips + group - 1) / group;
            for (int u = Interlocked.Increment(ref nextPack) - 1; u < units; u = Interlocked.Increment(ref nextPack) - 1)
            {
                int s0 = u * group, j0 = s0 * nr;
                B.Pack(BPack + ((long)s0 * Kc * nr), Jc + j0, Math.Min(group * nr, Nc - j0), P0, Kc, nr, (long)Kc * nr);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Compute(int worker)
        {
            int mr = TK.MR;
            float* aPack = APack + (worker * AStride);
            float* tile = Tiles + (worker * mr * TK.NR);

            // One unit = a range of whole MR strips × a range of NR strips. SplitM: row units of at most Mc
            // rows against every B strip; else every row (in Mc blocks) against a group of B strips. At least
            // 3 units per worker so a slower core takes fewer, and a multiple of the workers so equal cores
            // end together (171 strips in units of 24 left one core 1152 rows and the other 896).
            int mStrips = (M + mr - 1) / mr;
            int count = SplitM ? mStrips : NStrips;
            int units = Math.Min(count, Math.Max(SplitM ? (mStrips + (Mc / mr) - 1) / (Mc / mr) : 1, 3 * Workers));
            units = Math.Min(count, (units + Workers - 1) / Workers * Workers);
            for (int u = Interlocked.Increment(ref nextCompute) - 1; u < units; u = Interlocked.Increment(ref nextCompute) - 1)
            {
                var (u0, u1) = CpuParallel.Split(count, units, u);
                int r0 = SplitM ? u0 * mr : 0;
                int r1 = SplitM ? Math.Min(M, u1 * mr) : M;
                int s0 = SplitM ? 0 : u0, s1 = SplitM ? NStrips : u1;
                for (int ic = r0; ic < r1; ic += Mc)
                {
                    PackAndMultiply(ic, Math.Min(Mc, r1 - ic), s0, s1, aPack, tile);
                }
            }
        }

        private void PackAndMultiply(int ic, int mc, int s0, int s1, float* aPack, float* tile)
        {
            int mr = TK.MR;
            for (int ir = 0; ir < mc; ir += mr)
            {
                A.Pack(aPack + ((long)ir * Kc), ic + ir, Math.Min(mr, mc - ir), P0, Kc, mr);
            }

            Macro(ic, mc, s0, s1, aPack, tile);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Macro(int ic, int mc, int s0, int s1, float* aPack, float* tile)
        {
            int mr = TK.MR, nr = TK.NR;
            for (int s = s0; s < s1; s++)
            {
                int j = s * nr;
                int cols = Math.Min(nr, Nc - j);
                float* bp = BPanel + (s * BStride);
                float* bias = Bias == null ? null : Bias + Jc + j;
                for (int ir = 0; ir < mc; ir += mr)
                {
                    int rows = Math.Min(mr, mc - ir);
                    float* ap = aPack + ((long)ir * Kc);
                    float* cp = C + ((long)(ic + ir) * Ldc) + Jc + j;
                    if (rows == mr && cols == nr && !Masked)
                    {
                        TK.Run(ap, bp, Kc, cp, Ldc, Alpha, Beta, bias);
                    }
                    else
                    {
                        TK.Run(ap, bp, Kc, tile, nr, 1f, 0f, null);
                        WriteEdge(tile, nr, cp, rows, cols, bias, ic + ir, Jc + j);
                    }
                }
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void WriteEdge(float* tile, int nr, float* cp, int rows, int cols, float* bias, int i0, int j0)
        {
            for (int r = 0; r < rows; r++)
            {
                float* dst = cp + ((long)r * Ldc);
                long maskRow = (long)(i0 + r) * Epilogue.MaskLd;
                for (int col = 0; col < cols; col++)
                {
                    float acc = tile[(r * nr) + col];
                    if (Masked)
                    {
                        acc = Epilogue.Mask.Apply(acc, maskRow + j0 + col);
                    }

                    float v = Alpha * acc;
                    if (Beta != 0f)
                    {
                        v += Beta * dst[col];
                    }

                    dst[col] = bias == null ? v : v + bias[col];
                }
            }
        }
    }
}
