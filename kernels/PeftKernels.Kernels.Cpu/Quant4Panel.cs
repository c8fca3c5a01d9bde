// op(B) source over a 4-bit weight W [out, in] for the GEMM driver: the fused dequant-GEMM
// never materialises dequant(W). Packing dequantizes just the panel it needs (into L1) and,
// for op(B) = Wᵀ, transposes it into the micro-panel; the GEMV paths dequantize one row
// chunk at a time and stream the packed bytes once (dot products for x·Wᵀ, row axpys for g·W).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

internal readonly unsafe struct Quant4Panel : IPanelB
{
    private const int Chunk = 512;

    private readonly byte* packed;
    private readonly float* absmax;
    private readonly float[] table;
    private readonly int blocksize;
    private readonly int ld;
    private readonly bool trans;
    private readonly int k;
    private readonly SimdPath path;

    // For the n = 1 GEMV on Vector512 when every weight row is a whole number of blocks (the
    // usual in % blocksize == 0), PrepareDot permutes the GEMV's own copy of the op(A) row in
    // place (64-byte aligned, so the 512-bit loads of x never split a cache line): for
    // DotRunWide / DotRunWidePair when they apply (block size ≥ 64, rows a multiple of 128),
    // else for DotRunPermuted. DotAdd and DotAddPair then read that row as x.
    private readonly bool permute;
    private readonly bool wide;

    /// <summary>op(B) = dequant(w)ᵀ (trans, K = in: x·Wᵀ) or dequant(w) (K = out: g·W), w [out, in].</summary>
    public Quant4Panel(QuantizedWeight w, byte* packed, float* absmax, bool trans, SimdPath path)
    {
        this.packed = packed;
        this.absmax = absmax;
        table = Quant4Codes.Search(w.Type).Values;
        blocksize = w.Blocksize;
        ld = w.Shape[1];
        this.trans = trans;
        k = trans ? w.Shape[1] : w.Shape[0];
        this.path = path;
        permute = trans && path == SimdPath.Vector512 && ld % blocksize == 0;
        wide = permute && Quant4Simd.WideDotApplies(blocksize, k);
    }

    public bool CanDot => trans;

    public bool CanAxpy => !trans;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        if (!trans)
        {
            float* row = stackalloc float[cols];
            for (int p = 0; p < kc; p++)
            {
                Quant4Simd.DequantizeRun(packed, absmax, table, blocksize, ((long)(p0 + p) * ld) + j0, cols, row, path);
                for (int c0 = 0; c0 < cols; c0 += nr)
                {
                    int width = Math.Min(nr, cols - c0);
                    float* d = dst + ((c0 / nr) * stripStride) + (p * nr);
                    new ReadOnlySpan<float>(row + c0, width).CopyTo(new Span<float>(d, width));
                    new Span<float>(d + width, nr - width).Clear();
                }
            }

            return;
        }

        for (int c0 = 0; c0 < cols; c0 += nr)
        {
            PackTransposedStrip(dst + ((c0 / nr) * stripStride), j0 + c0, Math.Min(nr, cols - c0), p0, kc, nr);
        }
    }

    private void PackTransposedStrip(float* dst, int j0, int cols, int p0, int kc, int nr)
    {
        float* rows = stackalloc float[cols * kc];
        for (int c = 0; c < cols; c++)
        {
            Quant4Simd.DequantizeRun(packed, absmax, table, blocksize, ((long)(j0 + c) * ld) + p0, kc, rows + (c * kc), path);
        }

        if (PackTranspose.Usable)
        {
            PackTranspose.Pack(rows, kc, dst, cols, kc, nr);
        }
        else
        {
            for (int c = 0; c < cols; c++)
            {
                for (int p = 0; p < kc; p++)
                {
                    dst[(p * nr) + c] = rows[(c * kc) + p];
                }
            }
        }

        DenseB.ZeroColumns(dst, cols, kc, nr);
    }

    public void PrepareDot(float* a, int lda, int m)
    {
        if (m == 1 && permute)
        {
            if (wide)
            {
                Quant4Simd.PermuteForWideDotInPlace(a, k);
            }
            else
            {
                Quant4Simd.PermuteForDotInPlace(a, k);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void DotAdd(int j, float* a, int lda, int m, SimdPath simd, float* result)
    {
        if (m == 1 && permute)
        {
            result[0] += wide
                ? Quant4Simd.DotRunWide(packed, absmax, table, blocksize, (long)j * ld, k, a)
                : Quant4Simd.DotRunPermuted(packed, absmax, table, blocksize, (long)j * ld, k, a);
            return;
        }

        if (m == 1)
        {
            result[0] += Quant4Simd.DotRun(packed, absmax, table, blocksize, (long)j * ld, k, a, path);
            return;
        }

        float* row = stackalloc float[Chunk];
        for (int c0 = 0; c0 < k; c0 += Chunk)
        {
            int len = Math.Min(Chunk, k - c0);
            Quant4Simd.DequantizeRun(packed, absmax, table, blocksize, ((long)j * ld) + c0, len, row, path);
            RowDot.DotAdd(row, a + c0, lda, m, len, simd, result);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void DotAddPair(int j, float* a, SimdPath simd, float* result)
    {
        if (wide && blocksize == 64)
        {
            Quant4Simd.DotRunWidePair(packed, absmax, table, (long)j * ld, k, a, result);
            return;
        }

        DotAdd(j, a, k, 1, simd, result);
        DotAdd(j + 1, a, k, 1, simd, result + 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath simd)
    {
        float* row = stackalloc float[j1 - j0];
        for (int p = pStart; p < pEnd; p++)
        {
            Quant4Simd.DequantizeRun(packed, absmax, table, blocksize, ((long)p * ld) + j0, j1 - j0, row, path);
            for (int r = 0; r < m; r++)
            {
                RowAxpy.Add(row, a[(r * lda) + p], acc + (r * ldacc), j1 - j0, simd);
            }
        }
    }
}
