// op(B) source for fp16 weights (IEEE half, as HF F16 checkpoints store them): widened to fp32
// while packing a panel (amortised over the M rows of the block), and through a per-thread
// fp32 copy of the row for the GEMV paths (m ≤ 4), where the vectorised fp32 dot/axpy run.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

internal readonly unsafe struct F16B(Half* ptr, int ld, bool trans, int k) : IPanelB
{
    [ThreadStatic]
    private static float[]? scratch;

    public bool CanDot => trans;

    public bool CanAxpy => !trans;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        for (int c0 = 0; c0 < cols; c0 += nr)
        {
            int width = Math.Min(nr, cols - c0);
            float* strip = dst + ((c0 / nr) * stripStride);
            if (!trans)
            {
                for (int p = 0; p < kc; p++)
                {
                    float* d = strip + (p * nr);
                    TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(ptr + ((long)(p0 + p) * ld) + j0 + c0, width), new Span<float>(d, width));
                    new Span<float>(d + width, nr - width).Clear();
                }
            }
            else
            {
                for (int c = 0; c < width; c++)
                {
                    Half* src = ptr + ((long)(j0 + c0 + c) * ld) + p0;
                    for (int p = 0; p < kc; p++)
                    {
                        strip[(p * nr) + c] = (float)src[p];
                    }
                }

                DenseB.ZeroColumns(strip, width, kc, nr);
            }
        }
    }

    public void PrepareDot(float* a, int lda, int m)
    {
    }

    public void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result)
    {
        var row = Widen(ptr + ((long)j * ld), k);
        fixed (float* pr = row)
        {
            RowDot.DotAdd(pr, a, lda, m, k, path, result);
        }
    }

    public void DotAddPair(int j, float* a, SimdPath path, float* result)
    {
        DotAdd(j, a, k, 1, path, result);
        DotAdd(j + 1, a, k, 1, path, result + 1);
    }

    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path)
    {
        for (int p = pStart; p < pEnd; p++)
        {
            var row = Widen(ptr + ((long)p * ld) + j0, j1 - j0);
            fixed (float* pr = row)
            {
                for (int r = 0; r < m; r++)
                {
                    RowAxpy.Add(pr, a[(r * lda) + p], acc + (r * ldacc), j1 - j0, path);
                }
            }
        }
    }

    private static float[] Widen(Half* src, int length)
    {
        var buffer = scratch is { } s && s.Length >= length ? s : scratch = new float[Math.Max(length, 1024)];
        TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(src, length), buffer.AsSpan(0, length));
        return buffer;
    }
}
