// Operand sources of the GEMM driver. The driver never reads A or B directly: it asks a
// source to pack a panel of op(A) [m, k] or op(B) [k, n] into the micro-kernel layout
//   A panel: dst[(p − p0)·mr + (i − i0)]   (rows ≥ `rows` zero-filled)
//   B panel: dst[(p − p0)·nr + (j − j0)]   (cols ≥ `cols` zero-filled)
// so transposes, bf16 widening, scaling, dropout masks and K-concatenation ([x | s·h] and
// [W | B] of the one-GEMM LoRA fusion) all happen while packing, at no extra pass.
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

internal unsafe interface IPanelA
{
    void Pack(float* dst, int i0, int rows, int p0, int kc, int mr);
}

internal unsafe interface IPanelB
{
    /// <summary>True when op(B)[:, j] is contiguous in memory (B stored transposed) so the GEMV path can stream it.</summary>
    bool CanDot { get; }

    /// <summary>
    /// Packs columns [j0, j0 + cols) into ceil(cols / nr) strips, strip t at dst + t·stripStride;
    /// several strips at once so a row-major B is read in long contiguous runs.
    /// </summary>
    void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride);

    /// <summary>
    /// Called once by the GEMV path with its own materialised copy of op(A)'s rows before any
    /// <see cref="DotAdd"/>; a source may rewrite that copy in place (e.g. into the lane order
    /// of its decode), and <see cref="DotAdd"/> / <see cref="DotAddPair"/> then receive the same pointer.
    /// </summary>
    void PrepareDot(float* a, int lda, int m);

    /// <summary>result[r] += Σ_p a[r·lda + p] · op(B)[p, j] over this source's whole K, for r &lt; m.</summary>
    void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result);

    /// <summary>
    /// One row of op(A) against columns j and j + 1: result[0] += a · op(B)[:, j] and
    /// result[1] += a · op(B)[:, j + 1], each equal bit for bit to <see cref="DotAdd"/> with
    /// m = 1, so pairing never changes a result (a source may stream both columns at once).
    /// </summary>
    void DotAddPair(int j, float* a, SimdPath path, float* result);

    /// <summary>True when op(B)[p, :] is contiguous (B stored [k, n], unmasked) so the small-m path can stream rows.</summary>
    bool CanAxpy { get; }

    /// <summary>acc[r·ldacc + (j − j0)] += Σ_{p ∈ [pStart, pEnd)} a[r·lda + p] · op(B)[p, j] for j in [j0, j1), r &lt; m.</summary>
    void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path);
}

/// <summary>Dense fp32 op(A), optionally transposed, scaled and dropout-masked (mask index = storage offset).</summary>
internal readonly unsafe struct DenseA(float* ptr, int ld, bool trans, float scale = 1f, DropoutMask mask = default) : IPanelA
{
    /// <summary>Row i0 from column p0 when op(A)'s rows are plain contiguous runs along K (no transpose, scale or mask): a direct bf16 pair packer's input.</summary>
    public bool TryKRows(int i0, int p0, out float* src, out int stride)
    {
        bool plain = !trans && scale == 1f && !mask.Active;
        src = plain ? ptr + ((long)i0 * ld) + p0 : null;
        stride = ld;
        return plain;
    }

    /// <summary>Row p0 of the stored (transposed) A from column i0 when op(A) = Aᵀ is plain (no scale or mask): rows along M.</summary>
    public bool TryMRows(int i0, int p0, out float* src, out int stride)
    {
        bool plain = trans && scale == 1f && !mask.Active;
        src = plain ? ptr + ((long)p0 * ld) + i0 : null;
        stride = ld;
        return plain;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int i0, int rows, int p0, int kc, int mr)
    {
        bool plain = scale == 1f && !mask.Active;
        if (trans)
        {
            for (int p = 0; p < kc; p++)
            {
                long offset = ((long)(p0 + p) * ld) + i0;
                float* d = dst + (p * mr);
                if (plain)
                {
                    new ReadOnlySpan<float>(ptr + offset, rows).CopyTo(new Span<float>(d, rows));
                }
                else
                {
                    CopyScaled(ptr + offset, offset, d, rows, 1, plain: false);
                }

                new Span<float>(d + rows, mr - rows).Clear();
            }

            return;
        }

        if (plain && mr == 1 && rows == 1)
        {
            // One row of a GEMV: the packed strip is the row itself.
            new ReadOnlySpan<float>(ptr + ((long)i0 * ld) + p0, kc).CopyTo(new Span<float>(dst, kc));
        }
        else if (plain && PackTranspose.Usable)
        {
            PackTranspose.Pack(ptr + ((long)i0 * ld) + p0, ld, dst, rows, kc, mr);
        }
        else
        {
            for (int r = 0; r < rows; r++)
            {
                long offset = ((long)(i0 + r) * ld) + p0;
                CopyScaled(ptr + offset, offset, dst + r, kc, mr, plain);
            }
        }

        for (int r = rows; r < mr; r++)
        {
            for (int p = 0; p < kc; p++)
            {
                dst[(p * mr) + r] = 0f;
            }
        }
    }

    /// <summary>d[q·stride] = scale · drop(src[q]) for q &lt; count; offset is src's storage index (the mask's key).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CopyScaled(float* src, long offset, float* d, int count, int stride, bool plain)
    {
        for (int q = 0; q < count; q++)
        {
            float v = plain ? src[q] : (mask.Active ? mask.Apply(src[q], offset + q) : src[q]) * scale;
            d[q * stride] = v;
        }
    }
}

/// <summary>op(A) = [first | second] along K, split at <paramref name="k1"/>.</summary>
internal readonly unsafe struct ConcatA<T1, T2>(T1 first, T2 second, int k1) : IPanelA
    where T1 : struct, IPanelA
    where T2 : struct, IPanelA
{
    public T1 First => first;

    public T2 Second => second;

    public int K1 => k1;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int i0, int rows, int p0, int kc, int mr)
    {
        int head = Math.Clamp(k1 - p0, 0, kc);
        if (head > 0)
        {
            first.Pack(dst, i0, rows, p0, head, mr);
        }

        if (head < kc)
        {
            second.Pack(dst + ((long)head * mr), i0, rows, p0 + head - k1, kc - head, mr);
        }
    }
}

/// <summary>Dense fp32 op(B) with K rows: stored [k, n] (no transpose) or [n, k] (transpose, a weight [out, in]).</summary>
internal readonly unsafe struct DenseB(float* ptr, int ld, bool trans, int k, DropoutMask mask = default) : IPanelB
{
    /// <summary>Column j0 of op(B) from row p0 when op(B)'s columns are plain contiguous runs along K (stored transposed, unmasked).</summary>
    public bool TryKRows(int j0, int p0, out float* src, out int stride)
    {
        bool plain = trans && !mask.Active;
        src = plain ? ptr + ((long)j0 * ld) + p0 : null;
        stride = ld;
        return plain;
    }

    /// <summary>Row p0 of op(B) from column j0 when op(B)'s rows are plain contiguous runs along N (stored [k, n], unmasked).</summary>
    public bool TryNRows(int j0, int p0, out float* src, out int stride)
    {
        bool plain = !trans && !mask.Active;
        src = plain ? ptr + ((long)p0 * ld) + j0 : null;
        stride = ld;
        return plain;
    }

    public bool CanDot => trans && !mask.Active;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        if (!trans)
        {
            for (int p = 0; p < kc; p++)
            {
                long offset = ((long)(p0 + p) * ld) + j0;
                for (int c0 = 0; c0 < cols; c0 += nr)
                {
                    int width = Math.Min(nr, cols - c0);
                    float* src = ptr + offset + c0;
                    float* d = dst + ((c0 / nr) * stripStride) + (p * nr);
                    if (!mask.Active)
                    {
                        new ReadOnlySpan<float>(src, width).CopyTo(new Span<float>(d, width));
                    }
                    else
                    {
                        for (int c = 0; c < width; c++)
                        {
                            d[c] = mask.Apply(src[c], offset + c0 + c);
                        }
                    }

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
        if (!mask.Active && PackTranspose.Usable)
        {
            PackTranspose.Pack(ptr + ((long)j0 * ld) + p0, ld, dst, cols, kc, nr);
        }
        else
        {
            for (int c = 0; c < cols; c++)
            {
                long offset = ((long)(j0 + c) * ld) + p0;
                float* src = ptr + offset;
                float* d = dst + c;
                for (int p = 0; p < kc; p++)
                {
                    d[p * nr] = mask.Active ? mask.Apply(src[p], offset + p) : src[p];
                }
            }
        }

        ZeroColumns(dst, cols, kc, nr);
    }

    public void PrepareDot(float* a, int lda, int m)
    {
    }

    public void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result) =>
        RowDot.DotAdd(ptr + ((long)j * ld), a, lda, m, k, path, result);

    public void DotAddPair(int j, float* a, SimdPath path, float* result)
    {
        DotAdd(j, a, k, 1, path, result);
        DotAdd(j + 1, a, k, 1, path, result + 1);
    }

    public bool CanAxpy => !trans && !mask.Active;

    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path)
    {
        for (int p = pStart; p < pEnd; p++)
        {
            float* row = ptr + ((long)p * ld) + j0;
            for (int r = 0; r < m; r++)
            {
                RowAxpy.Add(row, a[(r * lda) + p], acc + (r * ldacc), j1 - j0, path);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ZeroColumns(float* dst, int cols, int kc, int nr)
    {
        if (cols == nr)
        {
            return;
        }

        for (int p = 0; p < kc; p++)
        {
            new Span<float>(dst + (p * nr) + cols, nr - cols).Clear();
        }
    }
}

/// <summary>bf16 op(B), widened to fp32 while packing (or inside the GEMV dot).</summary>
internal readonly unsafe struct Bf16B(ushort* ptr, int ld, bool trans, int k) : IPanelB
{
    /// <summary>Where op(B)[p0, j0] sits and whether op(B)'s columns (transposed, a weight [out, in]) or rows run contiguously.</summary>
    public ushort* At(int j0, int p0, out int stride, out bool kContiguous)
    {
        stride = ld;
        kContiguous = trans;
        return trans ? ptr + ((long)j0 * ld) + p0 : ptr + ((long)p0 * ld) + j0;
    }

    public bool CanDot => trans;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        if (!trans)
        {
            for (int p = 0; p < kc; p++)
            {
                ushort* src = ptr + ((long)(p0 + p) * ld) + j0;
                for (int c0 = 0; c0 < cols; c0 += nr)
                {
                    int width = Math.Min(nr, cols - c0);
                    float* d = dst + ((c0 / nr) * stripStride) + (p * nr);
                    for (int c = 0; c < width; c++)
                    {
                        d[c] = Bf16.ToSingle(src[c0 + c]);
                    }

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
        if (PackTranspose.Usable)
        {
            PackTranspose.Pack(ptr + ((long)j0 * ld) + p0, ld, dst, cols, kc, nr);
        }
        else
        {
            for (int c = 0; c < cols; c++)
            {
                ushort* src = ptr + ((long)(j0 + c) * ld) + p0;
                float* d = dst + c;
                for (int p = 0; p < kc; p++)
                {
                    d[p * nr] = Bf16.ToSingle(src[p]);
                }
            }
        }

        DenseB.ZeroColumns(dst, cols, kc, nr);
    }

    public void PrepareDot(float* a, int lda, int m)
    {
    }

    public void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result) =>
        RowDot.DotAddBf16(ptr + ((long)j * ld), a, lda, m, k, path, result);

    public void DotAddPair(int j, float* a, SimdPath path, float* result)
    {
        DotAdd(j, a, k, 1, path, result);
        DotAdd(j + 1, a, k, 1, path, result + 1);
    }

    public bool CanAxpy => !trans;

    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path)
    {
        for (int p = pStart; p < pEnd; p++)
        {
            ushort* row = ptr + ((long)p * ld) + j0;
            for (int r = 0; r < m; r++)
            {
                RowAxpy.Add(row, a[(r * lda) + p], acc + (r * ldacc), j1 - j0, path);
            }
        }
    }
}

/// <summary>op(B) = [first ; second] along K (rows of op(B)), split at <paramref name="k1"/>.</summary>
internal readonly unsafe struct ConcatB<T1, T2>(T1 first, T2 second, int k1) : IPanelB
    where T1 : struct, IPanelB
    where T2 : struct, IPanelB
{
    public T1 First => first;

    public T2 Second => second;

    public int K1 => k1;

    public bool CanDot => first.CanDot && second.CanDot;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        int head = Math.Clamp(k1 - p0, 0, kc);
        if (head > 0)
        {
            first.Pack(dst, j0, cols, p0, head, nr, stripStride);
        }

        if (head < kc)
        {
            second.Pack(dst + ((long)head * nr), j0, cols, p0 + head - k1, kc - head, nr, stripStride);
        }
    }

    public void PrepareDot(float* a, int lda, int m)
    {
        first.PrepareDot(a, lda, m);
        second.PrepareDot(a + k1, lda, m);
    }

    public void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result)
    {
        first.DotAdd(j, a, lda, m, path, result);
        second.DotAdd(j, a + k1, lda, m, path, result);
    }

    public void DotAddPair(int j, float* a, SimdPath path, float* result)
    {
        first.DotAddPair(j, a, path, result);
        second.DotAddPair(j, a + k1, path, result);
    }

    public bool CanAxpy => first.CanAxpy && second.CanAxpy;

    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path)
    {
        if (pStart < k1)
        {
            first.AxpyAdd(a, lda, m, j0, j1, pStart, Math.Min(pEnd, k1), acc, ldacc, path);
        }

        if (pEnd > k1)
        {
            second.AxpyAdd(a + k1, lda, m, j0, j1, Math.Max(pStart, k1) - k1, pEnd - k1, acc, ldacc, path);
        }
    }
}
