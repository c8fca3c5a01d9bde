// Decode GEMV over a column range, on the calling thread, with no managed allocation:
//   y[r, j] = Σ_p x[r, p]·W[j, p]     r < m (1 ≤ m ≤ 4), j ∈ [j0, j1); other columns of y untouched.
// x [m, in], W [out, in] of any WeightOperand storage (fp32, bf16, fp16, 4-bit NF4/FP4 with or without
// nested absmax), y [m, out]. No bias (the caller adds it).
// Why: a decode step is a chain of GEMVs over weights far larger than the caches, so its speed is the
// memory bandwidth; a batched engine splits each projection's output columns over its own threads (one
// fork-join per projection, its delegate cached) and calls this on each thread's range, so nothing is
// allocated per token. The math is the GEMM driver's GEMV (GemmDriver.GemvRange: the weight source's
// PrepareDot and the same DotRange as Gemm.Forward / Quant4Matmul.Forward with n ≤ 4), so every column
// equals theirs bit for bit on the same SIMD path. x is copied into a per-thread 64-byte-aligned buffer
// (pinned, allocated once per thread and grown on demand): the 4-bit source permutes its copy in place
// for the 512-bit decode, and aligned loads never split a cache line.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Single-threaded, allocation-free y[:, j0..j1) = x·Wᵀ for decode (m ≤ 4 rows), over any weight storage.</summary>
public static unsafe class DecodeGemv
{
    /// <summary>The most rows one call takes.</summary>
    public const int MaxRows = RowDot.MaxRows;

    [ThreadStatic]
    private static float[]? scratch;

    /// <summary>y[r, j] = Σ_p x[r, p]·w[j, p] for r &lt; m and j in [j0, j1); the other columns of y are not written.</summary>
    /// <param name="x">Input rows [m, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures], any storage.</param>
    /// <param name="y">Output [m, outFeatures]; only columns [j0, j1) of each row are written.</param>
    /// <param name="m">Rows, 1 to <see cref="MaxRows"/>.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="j0">First output column.</param>
    /// <param name="j1">End of the output columns (exclusive), j0 ≤ j1 ≤ outFeatures.</param>
    /// <param name="path">SIMD path (<see cref="SimdPath.Auto"/>: the widest supported).</param>
    /// <exception cref="ArgumentException">A length or w's shape differs from what the dims imply, or m or the column range is out of range.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static void Rows(ReadOnlySpan<float> x, in WeightOperand w, Span<float> y, int m, int inFeatures, int outFeatures, int j0, int j1, SimdPath path)
    {
        if (m < 1 || m > MaxRows)
        {
            throw new ArgumentOutOfRangeException(nameof(m), m, $"m must be in [1, {MaxRows}].");
        }

        CheckRows(x.Length, w, y.Length, m, inFeatures, outFeatures, j0, j1);

        var resolved = new KernelOptions(1, path).ResolvePath();
        if (j0 == j1)
        {
            return;
        }

        float* rows = Scratch(m * inFeatures);
        x.CopyTo(new Span<float>(rows, m * inFeatures));
        fixed (float* py = y)
        {
            switch (w.Storage)
            {
                case WeightFormat.F32:
                    fixed (float* pw = w.F32Span)
                    {
                        GemmDriver.GemvRange(resolved, new DenseB(pw, inFeatures, true, inFeatures), rows, m, inFeatures, j0, j1, py, outFeatures);
                    }

                    break;
                case WeightFormat.BF16:
                    fixed (ushort* pw = w.Bf16Span)
                    {
                        GemmDriver.GemvRange(resolved, new Bf16B(pw, inFeatures, true, inFeatures), rows, m, inFeatures, j0, j1, py, outFeatures);
                    }

                    break;
                case WeightFormat.F16:
                    fixed (Half* pw = w.F16Span)
                    {
                        GemmDriver.GemvRange(resolved, new F16B(pw, inFeatures, true, inFeatures), rows, m, inFeatures, j0, j1, py, outFeatures);
                    }

                    break;
                default:
                    var q = w.Quantized;
                    fixed (byte* pq = q.Packed)
                    fixed (float* pabs = q.AbsmaxFp32())
                    {
                        GemmDriver.GemvRange(resolved, new Quant4Panel(q, pq, pabs, true, resolved), rows, m, inFeatures, j0, j1, py, outFeatures);
                    }

                    break;
            }
        }
    }

    /// <summary>The checks of a column-range product y[:, j0..j1) = x·Wᵀ (this and <see cref="BatchGemv.Rows"/>); m is checked by the caller.</summary>
    internal static void CheckRows(int xLength, in WeightOperand w, int yLength, int m, int inFeatures, int outFeatures, int j0, int j1)
    {
        Check.Positive(inFeatures, "inFeatures");
        Check.Positive(outFeatures, "outFeatures");
        w.CheckShape(inFeatures, outFeatures);
        Check.Length("x", xLength, (long)m * inFeatures, "m·inFeatures");
        Check.Length("y", yLength, (long)m * outFeatures, "m·outFeatures");
        if (j0 < 0 || j1 < j0 || j1 > outFeatures)
        {
            throw new ArgumentOutOfRangeException(nameof(j1), $"the column range [{j0}, {j1}) must lie in [0, outFeatures {outFeatures}].");
        }
    }

    /// <summary>This thread's 64-byte-aligned buffer of at least <paramref name="floats"/> floats (pinned, so the address is stable).</summary>
    private static float* Scratch(int floats)
    {
        var buffer = scratch;
        if (buffer == null || buffer.Length < floats + 16)
        {
            buffer = GC.AllocateUninitializedArray<float>(Math.Max(floats + 16, 4096), pinned: true);
            scratch = buffer;
        }

        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
        return (float*)((start + 63) & ~(nint)63);
    }
}
