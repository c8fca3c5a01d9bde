// TF32 tensor-core GEMM (sm_80+): the same operands and epilogue as GemmTiles, with the
// products on mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (inline PTX through CudaAsm).
// Inputs are rounded to tf32 (cvt.rna: 10 mantissa bits, nearest, ties away), products are
// accumulated in fp32, so each product carries a relative error up to 2⁻¹¹ (opt-in only).
// Block tile 128×128, K slice 16 (two k8 steps), 8 warps as 2 (M) × 4 (N), warp tile 64×32 =
// 4×4 mma tiles, 64 fp32 accumulators per thread. Shared A [128 rows][16 k] and B [128 cols][16 k]
// with rows padded to 20 floats (fragment reads of the 8 groups × 4 lanes hit 32 banks).
// Fragments (PTX ISA, m16n8k8 .tf32; g = lane/4, t = lane%4):
//   a0 = A[g][t]  a1 = A[g+8][t]  a2 = A[g][t+4]  a3 = A[g+8][t+4]      (A 16×8, row)
//   b0 = B[t][g]  b1 = B[t+4][g]                                         (B 8×8, col)
//   c0 = C[g][2t] c1 = C[g][2t+1] c2 = C[g+8][2t] c3 = C[g+8][2t+1]       (C 16×8)
// EmulatedKernel runs the same body with the mma emulated (for the ILGPU CPU accelerator in tests):
// each lane scatters its fragment registers into a warp-private shared scratch at the coordinates
// the layout above gives them and reads back its C rows and columns, so the tiling, fragment and
// epilogue code is tested without a GPU. The launcher picks Kernel only on a CUDA device of sm_80
// or newer; EmulatedKernel only where tests force the tensor-core path on a non-CUDA accelerator.
using System.Runtime.CompilerServices;
using ILGPU.Runtime.Cuda;

namespace PeftKernels.Kernels.Gpu;

internal static class GemmTensorCore
{
    public const int Tile = 128;
    public const int TileK = 16;
    public const int Threads = 256;
    public const int Stride = TileK + 4;

    // Emulation scratch per warp: four 16×8 A tiles and four 8×8 B tiles.
    private const int ScratchA = 4 * 16 * 8;
    private const int ScratchPerWarp = ScratchA + (4 * 8 * 8);

    /// <summary>True on a CUDA accelerator of compute capability 8.0 or newer (TF32 mma.sync).</summary>
    public static bool IsSupported(Accelerator accelerator) =>
        accelerator is CudaAccelerator cuda && cuda.Architecture >= CudaArchitecture.SM_80;

    internal static void Kernel<TA, TB>(TA a, TB b, GemmEpilogue e, int m, int n, int k)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        var sa = SharedMemory.Allocate<float>(Tile * Stride);
        var sb = SharedMemory.Allocate<float>(Tile * Stride);
        Body<TA, TB, HardwareMma>(a, b, e, m, n, k, sa, sb, sa);
    }

    internal static void EmulatedKernel<TA, TB>(TA a, TB b, GemmEpilogue e, int m, int n, int k)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
    {
        var sa = SharedMemory.Allocate<float>(Tile * Stride);
        var sb = SharedMemory.Allocate<float>(Tile * Stride);
        var scratch = SharedMemory.Allocate<float>(ScratchPerWarp * (Threads / GpuMath.WarpSize));
        Body<TA, TB, EmulatedMma>(a, b, e, m, n, k, sa, sb, scratch);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Body<TA, TB, TM>(TA a, TB b, GemmEpilogue e, int m, int n, int k, ArrayView<float> sa, ArrayView<float> sb, ArrayView<float> scratch)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
        where TM : struct, IMmaStep
    {
        int tid = Group.IdxX, lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int g = lane >> 2, t = lane & 3;
        int warpRow = (warp >> 2) * 64, warpCol = (warp & 3) * 32;
        int row0 = Grid.IdxY * Tile, col0 = Grid.IdxX * Tile;
        bool aKMajor = a.ColumnsContiguous(), bKMajor = !b.ColumnsContiguous();

        var ra = LoadA(a, aKMajor, tid, row0, 0, m, k);
        var rb = LoadB(b, bKMajor, tid, col0, 0, n, k);
        Store(sa, ra, aKMajor, tid);
        Store(sb, rb, bKMajor, tid);
        Group.Barrier();

        WarpTile acc = default;
        for (int p0 = 0; p0 < k; p0 += TileK)
        {
            bool more = p0 + TileK < k;
            if (more)
            {
                ra = LoadA(a, aKMajor, tid, row0, p0 + TileK, m, k);
                rb = LoadB(b, bKMajor, tid, col0, p0 + TileK, n, k);
            }

            for (int ks = 0; ks < TileK; ks += 8)
            {
                var a0 = FragA.Read(sa, warpRow, g, t, ks);
                var a1 = FragA.Read(sa, warpRow + 16, g, t, ks);
                var a2 = FragA.Read(sa, warpRow + 32, g, t, ks);
                var a3 = FragA.Read(sa, warpRow + 48, g, t, ks);
                var b0 = FragB.Read(sb, warpCol, g, t, ks);
                var b1 = FragB.Read(sb, warpCol + 8, g, t, ks);
                var b2 = FragB.Read(sb, warpCol + 16, g, t, ks);
                var b3 = FragB.Read(sb, warpCol + 24, g, t, ks);
                default(TM).Step(ref acc, scratch, warp, g, t, a0, a1, a2, a3, b0, b1, b2, b3);
            }

            Group.Barrier();
            if (more)
            {
                Store(sa, ra, aKMajor, tid);
                Store(sb, rb, bKMajor, tid);
                Group.Barrier();
            }
        }

        int r = row0 + warpRow + g, c = col0 + warpCol + (2 * t);
        acc.Row0.Store(e, r, c, m, n);
        acc.Row1.Store(e, r + 16, c, m, n);
        acc.Row2.Store(e, r + 32, c, m, n);
        acc.Row3.Store(e, r + 48, c, m, n);
    }

    /// <summary>fp32 → tf32 bit pattern, round to nearest, ties away from zero (cvt.rna.tf32.f32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint ToTf32(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("cvt.rna.tf32.f32 %0, %1;", out uint r, x);
            return r;
        }

        uint bits = Interop.FloatAsInt(x);
        return (bits & 0x7F800000u) == 0x7F800000u ? bits : (bits + 0x1000u) & 0xFFFFE000u;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Frag8 LoadA<TA>(TA a, bool kMajor, int tid, int row0, int p0, int m, int k)
        where TA : struct, IGemmOperand => new()
        {
            X0 = ElementA(a, kMajor, tid, row0, p0, m, k),
            X1 = ElementA(a, kMajor, tid + Threads, row0, p0, m, k),
            X2 = ElementA(a, kMajor, tid + (2 * Threads), row0, p0, m, k),
            X3 = ElementA(a, kMajor, tid + (3 * Threads), row0, p0, m, k),
            X4 = ElementA(a, kMajor, tid + (4 * Threads), row0, p0, m, k),
            X5 = ElementA(a, kMajor, tid + (5 * Threads), row0, p0, m, k),
            X6 = ElementA(a, kMajor, tid + (6 * Threads), row0, p0, m, k),
            X7 = ElementA(a, kMajor, tid + (7 * Threads), row0, p0, m, k),
        };

    // Element idx of the [128, 16] slice; k-major operands walk p fastest (16 threads, 64 bytes).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ElementA<TA>(TA a, bool kMajor, int idx, int row0, int p0, int m, int k)
        where TA : struct, IGemmOperand
    {
        int i = kMajor ? idx >> 4 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        return row0 + i < m && p0 + p < k ? a.Load(row0 + i, p0 + p) : 0f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Frag8 LoadB<TB>(TB b, bool kMajor, int tid, int col0, int p0, int n, int k)
        where TB : struct, IGemmOperand => new()
        {
            X0 = ElementB(b, kMajor, tid, col0, p0, n, k),
            X1 = ElementB(b, kMajor, tid + Threads, col0, p0, n, k),
            X2 = ElementB(b, kMajor, tid + (2 * Threads), col0, p0, n, k),
            X3 = ElementB(b, kMajor, tid + (3 * Threads), col0, p0, n, k),
            X4 = ElementB(b, kMajor, tid + (4 * Threads), col0, p0, n, k),
            X5 = ElementB(b, kMajor, tid + (5 * Threads), col0, p0, n, k),
            X6 = ElementB(b, kMajor, tid + (6 * Threads), col0, p0, n, k),
            X7 = ElementB(b, kMajor, tid + (7 * Threads), col0, p0, n, k),
        };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ElementB<TB>(TB b, bool kMajor, int idx, int col0, int p0, int n, int k)
        where TB : struct, IGemmOperand
    {
        int j = kMajor ? idx >> 4 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        return col0 + j < n && p0 + p < k ? b.Load(p0 + p, col0 + j) : 0f;
    }

    // Shared layout [row][p] with stride 20 (row = i for A, j for B).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> s, Frag8 v, bool kMajor, int tid)
    {
        Store(s, v.X0, kMajor, tid);
        Store(s, v.X1, kMajor, tid + Threads);
        Store(s, v.X2, kMajor, tid + (2 * Threads));
        Store(s, v.X3, kMajor, tid + (3 * Threads));
        Store(s, v.X4, kMajor, tid + (4 * Threads));
        Store(s, v.X5, kMajor, tid + (5 * Threads));
        Store(s, v.X6, kMajor, tid + (6 * Threads));
        Store(s, v.X7, kMajor, tid + (7 * Threads));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> s, float value, bool kMajor, int idx)
    {
        int row = kMajor ? idx >> 4 : idx & (Tile - 1);
        int p = kMajor ? idx & (TileK - 1) : idx >> 7;
        s[(row * Stride) + p] = value;
    }

    /// <summary>The 16 mma of one k8 step of a warp tile.</summary>
    internal interface IMmaStep
    {
        void Step(ref WarpTile acc, ArrayView<float> scratch, int warp, int g, int t, in FragA a0, in FragA a1, in FragA a2, in FragA a3,
            in FragB b0, in FragB b1, in FragB b2, in FragB b3);
    }

    /// <summary>mma.sync on the tensor cores (CUDA sm_80+).</summary>
    internal readonly struct HardwareMma : IMmaStep
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Step(ref WarpTile acc, ArrayView<float> scratch, int warp, int g, int t, in FragA a0, in FragA a1, in FragA a2, in FragA a3,
            in FragB b0, in FragB b1, in FragB b2, in FragB b3)
        {
            acc.Row0.Mma(a0, b0, b1, b2, b3);
            acc.Row1.Mma(a1, b0, b1, b2, b3);
            acc.Row2.Mma(a2, b0, b1, b2, b3);
            acc.Row3.Mma(a3, b0, b1, b2, b3);
        }
    }

    /// <summary>The same products through a warp-private shared scratch (any accelerator).</summary>
    internal readonly struct EmulatedMma : IMmaStep
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Step(ref WarpTile acc, ArrayView<float> scratch, int warp, int g, int t, in FragA a0, in FragA a1, in FragA a2, in FragA a3,
            in FragB b0, in FragB b1, in FragB b2, in FragB b3) =>
            acc.Emulate(scratch.SubView(warp * ScratchPerWarp, ScratchPerWarp), g, t, a0, a1, a2, a3, b0, b1, b2, b3);
    }

    /// <summary>The A fragment of one 16×8 tile: rows rowBase + g (+8), k = ks + t (+4), as tf32.</summary>
    internal readonly struct FragA(uint a0, uint a1, uint a2, uint a3)
    {
        public readonly uint A0 = a0;
        public readonly uint A1 = a1;
        public readonly uint A2 = a2;
        public readonly uint A3 = a3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static FragA Read(ArrayView<float> s, int rowBase, int g, int t, int ks)
        {
            int top = ((rowBase + g) * Stride) + ks + t, bottom = top + (8 * Stride);
            return new FragA(ToTf32(s[top]), ToTf32(s[bottom]), ToTf32(s[top + 4]), ToTf32(s[bottom + 4]));
        }

        /// <summary>Writes a0..a3 to their layout coordinates of a [16][8] tile at <paramref name="at"/>.</summary>
        public void Scatter(ArrayView<float> s, int at, int g, int t)
        {
            s[at + (g * 8) + t] = Interop.IntAsFloat(A0);
            s[at + ((g + 8) * 8) + t] = Interop.IntAsFloat(A1);
            s[at + (g * 8) + t + 4] = Interop.IntAsFloat(A2);
            s[at + ((g + 8) * 8) + t + 4] = Interop.IntAsFloat(A3);
        }
    }

    /// <summary>The B fragment of one 8×8 tile: column colBase + g, k = ks + t (+4), as tf32.</summary>
    internal readonly struct FragB(uint b0, uint b1)
    {
        public readonly uint B0 = b0;
        public readonly uint B1 = b1;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static FragB Read(ArrayView<float> s, int colBase, int g, int t, int ks)
        {
            int at = ((colBase + g) * Stride) + ks + t;
            return new FragB(ToTf32(s[at]), ToTf32(s[at + 4]));
        }

        /// <summary>Writes b0 (k = t) and b1 (k = t + 4) of column g to a [8 k][8 n] tile at <paramref name="at"/>.</summary>
        public void Scatter(ArrayView<float> s, int at, int g, int t)
        {
            s[at + (t * 8) + g] = Interop.IntAsFloat(B0);
            s[at + ((t + 4) * 8) + g] = Interop.IntAsFloat(B1);
        }
    }

    /// <summary>The 16×8 accumulator fragment of one mma tile.</summary>
    internal struct Acc4
    {
        public float C0;
        public float C1;
        public float C2;
        public float C3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Mma(in FragA a, in FragB b)
        {
            Ref<float> d0 = C0, d1 = C1, d2 = C2, d3 = C3;
            Input<uint> a0 = a.A0, a1 = a.A1, a2 = a.A2, a3 = a.A3, b0 = b.B0, b1 = b.B1;
            CudaAsm.EmitRef(
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
                ref d0, ref d1, ref d2, ref d3, ref a0, ref a1, ref a2, ref a3, ref b0, ref b1);
            C0 = d0.Value;
            C1 = d1.Value;
            C2 = d2.Value;
            C3 = d3.Value;
        }

        /// <summary>C[g or g+8][2t or 2t+1] += Σ_k A[row][k]·B[k][col] from the scattered tiles A [16][8] and B [8 k][8 n].</summary>
        public void Emulate(ArrayView<float> s, int aAt, int bAt, int g, int t)
        {
            for (int q = 0; q < 8; q++)
            {
                float top = s[aAt + (g * 8) + q], bottom = s[aAt + ((g + 8) * 8) + q];
                float left = s[bAt + (q * 8) + (2 * t)], right = s[bAt + (q * 8) + (2 * t) + 1];
                C0 += top * left;
                C1 += top * right;
                C2 += bottom * left;
                C3 += bottom * right;
            }
        }

        public readonly void Store(in GemmEpilogue e, int row, int col, int m, int n)
        {
            StoreOne(e, C0, row, col, m, n);
            StoreOne(e, C1, row, col + 1, m, n);
            StoreOne(e, C2, row + 8, col, m, n);
            StoreOne(e, C3, row + 8, col + 1, m, n);
        }

        private static void StoreOne(in GemmEpilogue e, float value, int row, int col, int m, int n)
        {
            if (row < m && col < n)
            {
                e.Store(row, col, value);
            }
        }
    }

    /// <summary>One 16-row strip of the warp tile: four 16×8 accumulators side by side (32 columns).</summary>
    internal struct AccRow
    {
        public Acc4 N0;
        public Acc4 N1;
        public Acc4 N2;
        public Acc4 N3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Mma(in FragA a, in FragB b0, in FragB b1, in FragB b2, in FragB b3)
        {
            N0.Mma(a, b0);
            N1.Mma(a, b1);
            N2.Mma(a, b2);
            N3.Mma(a, b3);
        }

        public void Emulate(ArrayView<float> s, int aAt, int g, int t)
        {
            N0.Emulate(s, aAt, ScratchA, g, t);
            N1.Emulate(s, aAt, ScratchA + 64, g, t);
            N2.Emulate(s, aAt, ScratchA + 128, g, t);
            N3.Emulate(s, aAt, ScratchA + 192, g, t);
        }

        public readonly void Store(in GemmEpilogue e, int row, int col, int m, int n)
        {
            N0.Store(e, row, col, m, n);
            N1.Store(e, row, col + 8, m, n);
            N2.Store(e, row, col + 16, m, n);
            N3.Store(e, row, col + 24, m, n);
        }
    }

    /// <summary>A warp's 64×32 tile: four strips of 16 rows.</summary>
    internal struct WarpTile
    {
        public AccRow Row0;
        public AccRow Row1;
        public AccRow Row2;
        public AccRow Row3;

        /// <summary>The 16 mma of one k8 step without tensor cores: scatter the fragments, then read rows and columns.</summary>
        public void Emulate(ArrayView<float> s, int g, int t, in FragA a0, in FragA a1, in FragA a2, in FragA a3,
            in FragB b0, in FragB b1, in FragB b2, in FragB b3)
        {
            a0.Scatter(s, 0, g, t);
            a1.Scatter(s, 128, g, t);
            a2.Scatter(s, 256, g, t);
            a3.Scatter(s, 384, g, t);
            b0.Scatter(s, ScratchA, g, t);
            b1.Scatter(s, ScratchA + 64, g, t);
            b2.Scatter(s, ScratchA + 128, g, t);
            b3.Scatter(s, ScratchA + 192, g, t);
            Warp.Barrier();
            Row0.Emulate(s, 0, g, t);
            Row1.Emulate(s, 128, g, t);
            Row2.Emulate(s, 256, g, t);
            Row3.Emulate(s, 384, g, t);
            Warp.Barrier();
        }
    }
}
