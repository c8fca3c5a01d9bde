// Fused 4-bit dequant-GEMM / GEMV on the GPU: y = x · dequant(Wq)ᵀ + bias, Wq a Quant4View [out, in];
// backward through the frozen weight: dx [n, in] = dy [n, out] · dequant(Wq). dequant(Wq) is never
// materialised: the GEMM operand (Quant4Operand) dequantizes each element as the tile loads it.
// GEMV (n ≤ 4, decode): one warp per output feature j, 8 warps per group, the 16-entry table in
// shared memory. With in % 8 == 0 each lane reads one 32-bit word (8 codes of one block, a single
// absmax) per step and four words in flight, so a warp streams 512 bytes of codes per step; the
// x rows (reused by every warp) come from cache. Each sum is a lane-strided partial reduced by the
// xor butterfly, the same order on every run.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Fused 4-bit dequant-GEMM / GEMV on an ILGPU accelerator: y = x·dequant(Wq)ᵀ + bias.</summary>
public static class Quant4MatmulKernels
{
    /// <summary>Rows up to which the forward is a GEMV (streaming the packed weight once).</summary>
    public const int GemvMaxRows = 4;

    private const int WarpsPerGroup = 8;

    /// <summary>y [n, out] = x [n, in] · dequant(w)ᵀ + bias (bias empty or [out]); w is [out, in].</summary>
    public static void Forward(Accelerator accelerator, FloatView x, in Quant4View w, FloatView bias, FloatView y,
        int n, int inFeatures, int outFeatures) =>
        Forward(accelerator, x, w, bias, y, n, inFeatures, outFeatures, GemmPath.Auto);

    /// <summary>dx [n, in] = dy [n, out] · dequant(w): the input gradient through a frozen 4-bit weight [out, in].</summary>
    public static void Backward(Accelerator accelerator, FloatView dy, in Quant4View w, FloatView dx, int n, int inFeatures, int outFeatures) =>
        Backward(accelerator, dy, w, dx, n, inFeatures, outFeatures, GemmPath.Auto);

    internal static void Forward(Accelerator accelerator, FloatView x, in Quant4View w, FloatView bias, FloatView y,
        int n, int inFeatures, int outFeatures, GemmPath path, bool allowGemv = true)
    {
        GpuCheck.NotNull(accelerator);
        Quant4MatmulShapes.Forward([w.Rows, w.Cols], x.Length, bias.Length, y.Length, n, inFeatures, outFeatures);
        GpuCheck.FitsInt(x.Length, nameof(x));
        GpuCheck.FitsInt(y.Length, nameof(y));
        if (n == 0)
        {
            return;
        }

        if (allowGemv && n <= GemvMaxRows)
        {
            Gemv(accelerator, x, w, bias, y, n, inFeatures, outFeatures);
            return;
        }

        var op = new Quant4Operand(w, GpuTables.For(accelerator).Table(w.Type), trans: true);
        GemmTiles.Run(accelerator, new DenseOperand(x, inFeatures, false), op, new GemmEpilogue(y, outFeatures, 1f, 0f, bias),
            n, outFeatures, inFeatures, path);
    }

    internal static void Backward(Accelerator accelerator, FloatView dy, in Quant4View w, FloatView dx, int n, int inFeatures, int outFeatures, GemmPath path)
    {
        GpuCheck.NotNull(accelerator);
        Quant4MatmulShapes.Backward([w.Rows, w.Cols], dy.Length, dx.Length, n, inFeatures, outFeatures);
        GpuCheck.FitsInt(dy.Length, nameof(dy));
        GpuCheck.FitsInt(dx.Length, nameof(dx));
        var op = new Quant4Operand(w, GpuTables.For(accelerator).Table(w.Type), trans: false);
        GemmTiles.Run(accelerator, new DenseOperand(dy, outFeatures, false), op, new GemmEpilogue(dx, inFeatures, 1f, 0f),
            n, inFeatures, outFeatures, path);
    }

    /// <summary>y = x·dequant(w)ᵀ + bias for n ≤ 4 rows (dims already validated).</summary>
    internal static void Gemv(Accelerator accelerator, FloatView x, in Quant4View w, FloatView bias, FloatView y,
        int n, int inFeatures, int outFeatures)
    {
        var words = inFeatures % 8 == 0
            ? (ArrayView1D<uint, Stride1D.Dense>)w.Packed.SubView(0, w.Packed.Length & ~3L).BaseView.Cast<uint>()
            : default;
        var dims = new GemvDims(n, inFeatures, outFeatures, w.BlockShift, bias.Length != 0 ? 1 : 0, inFeatures % 8 == 0 ? 1 : 0);
        var config = new KernelConfig(GemmTiles.Ceil(outFeatures, WarpsPerGroup), WarpsPerGroup * GpuMath.WarpSize);
        Loaded.For(accelerator).Gemv(config, x, w.Packed, words, w.Absmax, GpuTables.For(accelerator).Table(w.Type), bias, y, dims);
    }

    internal static void GemvKernel(FloatView x, ByteView packed, ArrayView1D<uint, Stride1D.Dense> words, FloatView absmax,
        FloatView table, FloatView bias, FloatView y, GemvDims d)
    {
        var codebook = SharedMemory.Allocate<float>(16);
        if (Group.IdxX < 16)
        {
            codebook[Group.IdxX] = table[Group.IdxX];
        }

        Group.Barrier();
        int j = (Grid.IdxX * WarpsPerGroup) + Warp.WarpIdx, lane = Warp.LaneIdx;
        if (j >= d.Out)
        {
            return;
        }

        var acc = default(Acc4);
        int rowStart = j * d.In;
        if (d.Words != 0)
        {
            int count = d.In >> 3, first = rowStart >> 3;
            int q = lane;
            for (; q + (3 * GpuMath.WarpSize) < count; q += 4 * GpuMath.WarpSize)
            {
                uint w0 = words[first + q], w1 = words[first + q + 32], w2 = words[first + q + 64], w3 = words[first + q + 96];
                acc.Word(x, w0, absmax, codebook, d, rowStart, q);
                acc.Word(x, w1, absmax, codebook, d, rowStart, q + 32);
                acc.Word(x, w2, absmax, codebook, d, rowStart, q + 64);
                acc.Word(x, w3, absmax, codebook, d, rowStart, q + 96);
            }

            for (; q < count; q += GpuMath.WarpSize)
            {
                acc.Word(x, words[first + q], absmax, codebook, d, rowStart, q);
            }
        }
        else
        {
            for (int p = lane; p < d.In; p += GpuMath.WarpSize)
            {
                int e = rowStart + p, code = packed[e >> 1];
                float wv = codebook[(e & 1) == 0 ? code >> 4 : code & 0xF] * absmax[e >> d.BlockShift];
                acc.Add(x, wv, d, p);
            }
        }

        float b = d.HasBias != 0 ? bias[j] : 0f;
        float s0 = GpuMath.WarpSum(acc.S0), s1 = GpuMath.WarpSum(acc.S1), s2 = GpuMath.WarpSum(acc.S2), s3 = GpuMath.WarpSum(acc.S3);
        if (lane == 0)
        {
            y[j] = s0 + b;
            if (d.N > 1)
            {
                y[d.Out + j] = s1 + b;
            }

            if (d.N > 2)
            {
                y[(2 * d.Out) + j] = s2 + b;
            }

            if (d.N > 3)
            {
                y[(3 * d.Out) + j] = s3 + b;
            }
        }
    }

    // HasBias and Words are 0/1 ints: kernel parameters must be blittable.
    internal readonly record struct GemvDims(int N, int In, int Out, int BlockShift, int HasBias, int Words);

    /// <summary>The (up to four) row sums of one lane.</summary>
    private struct Acc4
    {
        public float S0;
        public float S1;
        public float S2;
        public float S3;

        public void Add(FloatView x, float w, in GemvDims d, int p)
        {
            S0 += x[p] * w;
            if (d.N > 1)
            {
                S1 += x[d.In + p] * w;
            }

            if (d.N > 2)
            {
                S2 += x[(2 * d.In) + p] * w;
            }

            if (d.N > 3)
            {
                S3 += x[(3 * d.In) + p] * w;
            }
        }

        // Word q of the row holds elements 8q..8q+7 (one block: blocksize ≥ 32 and 8 | in); little-endian
        // byte b holds elements 2b (high nibble) and 2b + 1 (low nibble).
        public void Word(FloatView x, uint word, FloatView absmax, ArrayView<float> codebook, in GemvDims d, int rowStart, int q)
        {
            int p = 8 * q;
            float s = absmax[(rowStart + p) >> d.BlockShift];
            Add(x, codebook[(int)((word >> 4) & 0xF)] * s, d, p);
            Add(x, codebook[(int)(word & 0xF)] * s, d, p + 1);
            Add(x, codebook[(int)((word >> 12) & 0xF)] * s, d, p + 2);
            Add(x, codebook[(int)((word >> 8) & 0xF)] * s, d, p + 3);
            Add(x, codebook[(int)((word >> 20) & 0xF)] * s, d, p + 4);
            Add(x, codebook[(int)((word >> 16) & 0xF)] * s, d, p + 5);
            Add(x, codebook[(int)((word >> 28) & 0xF)] * s, d, p + 6);
            Add(x, codebook[(int)((word >> 24) & 0xF)] * s, d, p + 7);
        }
    }

    private sealed class Loaded
    {
        public readonly Action<KernelConfig, FloatView, ByteView, ArrayView1D<uint, Stride1D.Dense>, FloatView, FloatView, FloatView, FloatView, GemvDims> Gemv;

        private Loaded(Accelerator accelerator) =>
            Gemv = accelerator.LoadStreamKernel<FloatView, ByteView, ArrayView1D<uint, Stride1D.Dense>, FloatView, FloatView, FloatView, FloatView, GemvDims>(GemvKernel);

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
