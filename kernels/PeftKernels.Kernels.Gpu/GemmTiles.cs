// The fp32 GEMM core on the GPU: acc[i, j] = Σ_p op(A)[i, p]·op(B)[p, j], then the epilogue.
// Tiled kernel (one group of 256 threads per 128×128 block of C):
//   - K is walked in slices of 8: the A slice [128, 8] and B slice [8, 128] go to shared memory
//     (stored k-major, rows padded to 132 floats so the transposing stores hit 32 banks), the next
//     slice is prefetched into registers while the current one is multiplied;
//   - thread (tx, ty) of the 16×16 layout owns the 8×8 outputs at rows ty + 16·a, columns tx + 16·b
//     (strided, so a warp's shared reads are broadcasts / consecutive words and its C stores coalesce),
//     64 fp32 accumulators in registers: 16 shared loads feed 64 FMAs;
//   - out-of-range rows, columns and k read as 0, so any m, n, k works (k = 0 gives beta·C).
// Naive kernel (small problems, and skinny ones such as the LoRA rank-r GEMMs): one thread per C
// element, p ascending. With min(m, n) ≤ 32 a 128×128 tile would leave most of its work idle and
// the grid would hold only ceil(max(m, n)/128) groups; one thread per output fills the device and
// reads the narrow operand from cache (a heuristic: not yet measured on a GPU).
// Each output is one thread's own sum over p in a fixed order: results do not depend on the grid.
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>Which GEMM kernel runs (tests force each one; Auto picks by size and device).</summary>
internal enum GemmPath
{
    Auto,
    Naive,
    Tiled,
    TensorCore,
}

internal static class GemmTiles
{
    public const int Tile = 128;
    public const int TileK = 8;
    public const int Threads = 256;
    public const int Stride = Tile + 4;

    /// <summary>Below this many multiply-adds the naive kernel wins (no shared-memory staging to amortise).</summary>
    public const long NaiveMaxWork = 1L << 18;

    /// <summary>Outputs with at most this many rows or columns go to the naive kernel (see the file comment).</summary>
    public const int SkinnyMax = 32;

    public static void Run<TA, TB>(Accelerator accelerator, TA a, TB b, in GemmEpilogue epilogue, int m, int n, int k,
        GemmPath path = GemmPath.Auto, bool allowTf32 = false)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        if (m == 0 || n == 0)
        {
            return;
        }

        if (path == GemmPath.Auto)
        {
            path = (long)m * n * Math.Max(k, 1) <= NaiveMaxWork || Math.Min(m, n) <= SkinnyMax ? GemmPath.Naive
                : allowTf32 && GemmTensorCore.IsSupported(accelerator) ? GemmPath.TensorCore
                : GemmPath.Tiled;
        }

        switch (path)
        {
            case GemmPath.Naive:
                Launchers<TA, TB>.For(accelerator).Naive((int)((long)m * n), a, b, epilogue, m, n, k);
                break;
            case GemmPath.TensorCore:
                Launchers<TA, TB>.For(accelerator).TensorCore(
                    new KernelConfig(new Index2D(Ceil(n, GemmTensorCore.Tile), Ceil(m, GemmTensorCore.Tile)), new Index2D(GemmTensorCore.Threads, 1)),
                    a, b, epilogue, m, n, k);
                break;
            default:
                Launchers<TA, TB>.For(accelerator).Tiled(
                    new KernelConfig(new Index2D(Ceil(n, Tile), Ceil(m, Tile)), new Index2D(Threads, 1)), a, b, epilogue, m, n, k);
                break;
        }
    }

    public static int Ceil(int value, int step) => (value + step - 1) / step;

    internal static void NaiveKernel<TA, TB>(Index1D index, TA a, TB b, GemmEpilogue e, int m, int n, int k)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        int i = index / n, j = index - (i * n);
        float acc = 0f;
        for (int p = 0; p < k; p++)
        {
            acc += a.Load(i, p) * b.Load(p, j);
        }

        e.Store(i, j, acc);
    }

    internal static void TiledKernel<TA, TB>(TA a, TB b, GemmEpilogue e, int m, int n, int k)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        var sa = SharedMemory.Allocate<float>(TileK * Stride);
        var sb = SharedMemory.Allocate<float>(TileK * Stride);
        int tid = Group.IdxX, tx = tid & 15, ty = tid >> 4;
        int row0 = Grid.IdxY * Tile, col0 = Grid.IdxX * Tile;
        bool aKMajor = a.ColumnsContiguous(), bKMajor = !b.ColumnsContiguous();

        var ra = LoadA(a, aKMajor, tid, row0, 0, m, k);
        var rb = LoadB(b, bKMajor, tid, col0, 0, n, k);
        StoreA(sa, ra, aKMajor, tid);
        StoreB(sb, rb, bKMajor, tid);
        Group.Barrier();

        Frag8 c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        for (int p0 = 0; p0 < k; p0 += TileK)
        {
            bool more = p0 + TileK < k;
            if (more)
            {
                ra = LoadA(a, aKMajor, tid, row0, p0 + TileK, m, k);
                rb = LoadB(b, bKMajor, tid, col0, p0 + TileK, n, k);
            }

            for (int kk = 0; kk < TileK; kk++)
            {
                var fa = Frag8.Read(sa, (kk * Stride) + ty);
                var fb = Frag8.Read(sb, (kk * Stride) + tx);
                c0.Fma(fa.X0, fb);
                c1.Fma(fa.X1, fb);
                c2.Fma(fa.X2, fb);
                c3.Fma(fa.X3, fb);
                c4.Fma(fa.X4, fb);
                c5.Fma(fa.X5, fb);
                c6.Fma(fa.X6, fb);
                c7.Fma(fa.X7, fb);
            }

            Group.Barrier();
            if (more)
            {
                StoreA(sa, ra, aKMajor, tid);
                StoreB(sb, rb, bKMajor, tid);
                Group.Barrier();
            }
        }

        int r = row0 + ty, c = col0 + tx;
        StoreRow(e, c0, r, c, m, n);
        StoreRow(e, c1, r + 16, c, m, n);
        StoreRow(e, c2, r + 32, c, m, n);
        StoreRow(e, c3, r + 48, c, m, n);
        StoreRow(e, c4, r + 64, c, m, n);
        StoreRow(e, c5, r + 80, c, m, n);
        StoreRow(e, c6, r + 96, c, m, n);
        StoreRow(e, c7, r + 112, c, m, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Quad LoadA<TA>(TA a, bool kMajor, int tid, int row0, int p0, int m, int k)
        where TA : struct, IGemmOperand => new(
            ElementA(a, kMajor, tid, row0, p0, m, k),
            ElementA(a, kMajor, tid + Threads, row0, p0, m, k),
            ElementA(a, kMajor, tid + (2 * Threads), row0, p0, m, k),
            ElementA(a, kMajor, tid + (3 * Threads), row0, p0, m, k));

    // Element idx of the [128, 8] slice: k-major operands walk p fastest (8 threads read 8 adjacent floats).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ElementA<TA>(TA a, bool kMajor, int idx, int row0, int p0, int m, int k)
        where TA : struct, IGemmOperand
    {
        int i = kMajor ? idx >> 3 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        return row0 + i < m && p0 + p < k ? a.Load(row0 + i, p0 + p) : 0f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Quad LoadB<TB>(TB b, bool kMajor, int tid, int col0, int p0, int n, int k)
        where TB : struct, IGemmOperand => new(
            ElementB(b, kMajor, tid, col0, p0, n, k),
            ElementB(b, kMajor, tid + Threads, col0, p0, n, k),
            ElementB(b, kMajor, tid + (2 * Threads), col0, p0, n, k),
            ElementB(b, kMajor, tid + (3 * Threads), col0, p0, n, k));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ElementB<TB>(TB b, bool kMajor, int idx, int col0, int p0, int n, int k)
        where TB : struct, IGemmOperand
    {
        int j = kMajor ? idx >> 3 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        return col0 + j < n && p0 + p < k ? b.Load(p0 + p, col0 + j) : 0f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreA(ArrayView<float> s, Quad q, bool kMajor, int tid)
    {
        Store(s, q.X0, kMajor, tid);
        Store(s, q.X1, kMajor, tid + Threads);
        Store(s, q.X2, kMajor, tid + (2 * Threads));
        Store(s, q.X3, kMajor, tid + (3 * Threads));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreB(ArrayView<float> s, Quad q, bool kMajor, int tid) => StoreA(s, q, kMajor, tid);

    // Shared layout [p][row] with row stride 132: the same index map for A (row = i) and B (row = j).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> s, float value, bool kMajor, int idx)
    {
        int row = kMajor ? idx >> 3 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        s[(p * Stride) + row] = value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(GemmEpilogue e, Frag8 f, int row, int col, int m, int n)
    {
        if (row >= m)
        {
            return;
        }

        StoreOne(e, f.X0, row, col, n);
        StoreOne(e, f.X1, row, col + 16, n);
        StoreOne(e, f.X2, row, col + 32, n);
        StoreOne(e, f.X3, row, col + 48, n);
        StoreOne(e, f.X4, row, col + 64, n);
        StoreOne(e, f.X5, row, col + 80, n);
        StoreOne(e, f.X6, row, col + 96, n);
        StoreOne(e, f.X7, row, col + 112, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreOne(GemmEpilogue e, float value, int row, int col, int n)
    {
        if (col < n)
        {
            e.Store(row, col, value);
        }
    }

    /// <summary>The loaded GEMM kernels of one operand pair on one accelerator.</summary>
    private sealed class Launchers<TA, TB>
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        public readonly Action<Index1D, TA, TB, GemmEpilogue, int, int, int> Naive;
        public readonly Action<KernelConfig, TA, TB, GemmEpilogue, int, int, int> Tiled;
        private readonly Accelerator accelerator;
        private Action<KernelConfig, TA, TB, GemmEpilogue, int, int, int>? tensorCore;

        private Launchers(Accelerator accelerator)
        {
            this.accelerator = accelerator;
            Naive = accelerator.LoadAutoGroupedStreamKernel<Index1D, TA, TB, GemmEpilogue, int, int, int>(NaiveKernel);
            Tiled = accelerator.LoadStreamKernel<TA, TB, GemmEpilogue, int, int, int>(TiledKernel);
        }

        // Loaded on first use only: the mma.sync PTX cannot be loaded where it cannot run. Elsewhere
        // (tests forcing this path on the CPU accelerator) the same kernel body with an emulated mma.
        public Action<KernelConfig, TA, TB, GemmEpilogue, int, int, int> TensorCore =>
            tensorCore ??= accelerator.LoadStreamKernel<TA, TB, GemmEpilogue, int, int, int>(
                accelerator.AcceleratorType == AcceleratorType.Cuda ? GemmTensorCore.Kernel : GemmTensorCore.EmulatedKernel);

        public static Launchers<TA, TB> For(Accelerator accelerator) =>
            GpuKernelCache.Get(accelerator, static acc => new Launchers<TA, TB>(acc));
    }
}

/// <summary>Four floats in registers (a thread's share of one tile slice).</summary>
internal readonly struct Quad(float x0, float x1, float x2, float x3)
{
    public readonly float X0 = x0;
    public readonly float X1 = x1;
    public readonly float X2 = x2;
    public readonly float X3 = x3;
}

/// <summary>Eight floats in registers: one row of a thread's 8×8 block, or 8 strided shared-memory values.</summary>
internal struct Frag8
{
    public float X0;
    public float X1;
    public float X2;
    public float X3;
    public float X4;
    public float X5;
    public float X6;
    public float X7;

    /// <summary>s[at + 16·q] for q = 0..7.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Frag8 Read(ArrayView<float> s, int at) => new()
    {
        X0 = s[at],
        X1 = s[at + 16],
        X2 = s[at + 32],
        X3 = s[at + 48],
        X4 = s[at + 64],
        X5 = s[at + 80],
        X6 = s[at + 96],
        X7 = s[at + 112],
    };

    /// <summary>this += a·b element-wise.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fma(float a, in Frag8 b)
    {
        X0 += a * b.X0;
        X1 += a * b.X1;
        X2 += a * b.X2;
        X3 += a * b.X3;
        X4 += a * b.X4;
        X5 += a * b.X5;
        X6 += a * b.X6;
        X7 += a * b.X7;
    }
}
