// Batched decode product: y [m, out] = x [m, in] · Wᵀ for a few dozen rows (a continuous-batching engine's
// decode step: one row per running sequence), W [out, in] frozen, in any WeightOperand storage.
//   y[r, j] = Σ_p x[r, p]·W[j, p]
// Why: the packed GEMM (Gemm.Forward) transposes every weight into micro-panels on each call. With
// m ≤ 64 that packing is not amortised: in a 64-sequence decode step of a ~125M Llama it took a third
// as long as the micro-kernel itself (perf). Here both operands are read as they lie, row-major and
// contiguous in p, by an inner-product tile: 4 rows of x against 4 rows of W, 16 vector accumulators
// along p, summed across lanes at the end (on the 512-bit path all 16 by one transpose-and-add tree:
// 64 rows × 768 went from ~950 to ~835 µs on one Zen 4 thread, BatchGemvBench; 16 separate horizontal
// sums cost ~10 % of the FMAs). The 4 weight rows (12 KB in fp32) stay in L1 while every quad of x
// rows (L2-resident: 192 KB for 64 rows of 768) passes
// them, so each weight is read from memory once per call. bf16 weights are widened as they are loaded;
// fp16 and 4-bit (NF4/FP4, with or without nested absmax) ones are decoded 4 rows at a time into a
// per-thread buffer first (the same DequantizeRun as the GEMM's packing). Sums run in a different
// order than Gemm.Forward's, so results agree with it within fp32 rounding, not bit for bit.
// Threads: Forward splits the columns into contiguous ranges, one per thread (Rows on each), so every
// weight row is read by one thread; results do not depend on the thread count.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>y = x·Wᵀ for a batch of decode rows, reading x and W in place (no packing), over any weight storage.</summary>
public static unsafe class BatchGemv
{
    /// <summary>Rows of x and of W per tile.</summary>
    private const int Tile = 4;

    [ThreadStatic]
    private static float[]? decoded;

    /// <summary>y [m, out] = x [m, in] · Wᵀ, the columns split over <paramref name="options"/>' threads.</summary>
    /// <param name="x">Input rows [m, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures], any storage.</param>
    /// <param name="y">Output [m, outFeatures].</param>
    /// <param name="m">Rows, at least 1.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A length or w's shape differs from what the dims imply.</exception>
    /// <exception cref="NotSupportedException">The SIMD path is not supported on this processor.</exception>
    public static void Forward(ReadOnlySpan<float> x, in WeightOperand w, Span<float> y, int m, int inFeatures, int outFeatures, KernelOptions options)
    {
        Check.Positive(m, "m");
        var path = options.ResolvePath();
        int strips = (outFeatures + Tile - 1) / Tile;
        int parts = Math.Max(1, Math.Min(options.ResolveThreads(), strips));
        if (parts == 1)
        {
            Rows(x, w, y, m, inFeatures, outFeatures, 0, outFeatures, path);
            return;
        }

        Check.Length("x", x.Length, (long)m * inFeatures, "m·inFeatures");
        Check.Length("y", y.Length, (long)m * outFeatures, "m·outFeatures");
        var weight = w;
        fixed (float* px = x, py = y)
        {
            float* xs = px, ys = py;
            CpuParallel.For(parts, parts, part =>
            {
                var (s0, s1) = CpuParallel.Split(strips, parts, part);
                Rows(new ReadOnlySpan<float>(xs, m * inFeatures), weight, new Span<float>(ys, m * outFeatures), m, inFeatures, outFeatures,
                    s0 * Tile, Math.Min(outFeatures, s1 * Tile), path);
            });
        }
    }

    /// <summary>y[r, j] = Σ_p x[r, p]·w[j, p] for every row r &lt; m and j in [j0, j1), on the calling thread; other columns untouched.</summary>
    /// <param name="x">Input rows [m, inFeatures].</param>
    /// <param name="w">Frozen weight [outFeatures, inFeatures], any storage.</param>
    /// <param name="y">Output [m, outFeatures]; only columns [j0, j1) of each row are written.</param>
    /// <param name="m">Rows, at least 1.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="j0">First output column.</param>
    /// <param name="j1">End of the output columns (exclusive), j0 ≤ j1 ≤ outFeatures.</param>
    /// <param name="path">SIMD path (<see cref="SimdPath.Auto"/>: the widest supported).</param>
    /// <exception cref="ArgumentException">A length or w's shape differs from what the dims imply, or the column range is out of range.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static void Rows(ReadOnlySpan<float> x, in WeightOperand w, Span<float> y, int m, int inFeatures, int outFeatures, int j0, int j1, SimdPath path)
    {
        Check.Positive(m, "m");
        DecodeGemv.CheckRows(x.Length, w, y.Length, m, inFeatures, outFeatures, j0, j1);

        var resolved = new KernelOptions(1, path).ResolvePath();
        int k = inFeatures;
        fixed (float* px = x, py = y)
        {
            switch (w.Storage)
            {
                case WeightFormat.F32:
                    fixed (float* pw = w.F32Span)
                    {
                        for (int j = j0; j < j1; j += Tile)
                        {
                            Strip<float, Fp32Load>(px, pw + ((long)j * k), m, k, Math.Min(Tile, j1 - j), py + j, outFeatures, resolved);
                        }
                    }

                    break;
                case WeightFormat.BF16:
                    fixed (ushort* pw = w.Bf16Span)
                    {
                        for (int j = j0; j < j1; j += Tile)
                        {
                            Strip<ushort, Bf16Load>(px, pw + ((long)j * k), m, k, Math.Min(Tile, j1 - j), py + j, outFeatures, resolved);
                        }
                    }

                    break;
                default:
                    DecodedStrips(px, w, m, k, j0, j1, py, outFeatures, resolved);
                    break;
            }
        }
    }

    /// <summary>fp16 and 4-bit weights: each strip of up to 4 rows decoded to fp32 in a per-thread buffer, then multiplied.</summary>
    private static void DecodedStrips(float* x, in WeightOperand w, int m, int k, int j0, int j1, float* y, int ldy, SimdPath path)
    {
        var buffer = decoded;
        if (buffer == null || buffer.Length < Tile * k)
        {
            buffer = GC.AllocateUninitializedArray<float>(Math.Max(Tile * k, 4096), pinned: true);
            decoded = buffer;
        }

        float* rows = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
        if (w.Storage == WeightFormat.F16)
        {
            fixed (Half* pw = w.F16Span)
            {
                for (int j = j0; j < j1; j += Tile)
                {
                    int count = Math.Min(Tile, j1 - j);
                    TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(pw + ((long)j * k), count * k), new Span<float>(rows, count * k));

                    Strip<float, Fp32Load>(x, rows, m, k, count, y + j, ldy, path);
                }
            }

            return;
        }

        var q = w.Quantized;
        var table = Quant4Codes.Search(q.Type).Values;
        fixed (byte* pq = q.Packed)
        fixed (float* pabs = q.AbsmaxFp32())
        {
            for (int j = j0; j < j1; j += Tile)
            {
                int count = Math.Min(Tile, j1 - j);
                Quant4Simd.DequantizeRun(pq, pabs, table, q.Blocksize, (long)j * k, count * k, rows, path);
                Strip<float, Fp32Load>(x, rows, m, k, count, y + j, ldy, path);
            }
        }
    }

    /// <summary>y[r, c] for every r &lt; m and c &lt; count: the x rows against <paramref name="count"/> (≤ 4) consecutive weight rows.</summary>
    private static void Strip<T, TL>(float* x, T* w, int m, int k, int count, float* y, int ldy, SimdPath path)
        where T : unmanaged
        where TL : IWidenLoad<T>
    {
        switch (path)
        {
            case SimdPath.Vector512:
                Strip<T, TL, Vector512<float>, V512>(x, w, m, k, count, y, ldy);
                break;
            case SimdPath.Vector256:
                Strip<T, TL, Vector256<float>, V256>(x, w, m, k, count, y, ldy);
                break;
            default:
                Strip<T, TL, float, V1>(x, w, m, k, count, y, ldy);
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Strip<T, TL, TV, TVec>(float* x, T* w, int m, int k, int count, float* y, int ldy)
        where T : unmanaged
        where TL : IWidenLoad<T>
        where TV : unmanaged
        where TVec : struct, IVec<TV>
    {
        // Missing weight rows of a short strip (and missing x rows of the last quad) alias row 0: their sums are not stored.
        T* w0 = w, w1 = count > 1 ? w + k : w, w2 = count > 2 ? w + (2L * k) : w, w3 = count > 3 ? w + (3L * k) : w;
        int width = TVec.Width, kv = k - (k % width);
        float* sums = stackalloc float[Tile * Tile];
        for (int r = 0; r < m; r += Tile)
        {
            int rows = Math.Min(Tile, m - r);
            float* x0 = x + ((long)r * k);
            float* x1 = rows > 1 ? x0 + k : x0, x2 = rows > 2 ? x0 + (2L * k) : x0, x3 = rows > 3 ? x0 + (3L * k) : x0;
            TV a00 = default, a01 = default, a02 = default, a03 = default;
            TV a10 = default, a11 = default, a12 = default, a13 = default;
            TV a20 = default, a21 = default, a22 = default, a23 = default;
            TV a30 = default, a31 = default, a32 = default, a33 = default;
            for (int p = 0; p < kv; p += width)
            {
                TV v0 = TVec.LoadWidened<T, TL>(w0 + p), v1 = TVec.LoadWidened<T, TL>(w1 + p);
                TV v2 = TVec.LoadWidened<T, TL>(w2 + p), v3 = TVec.LoadWidened<T, TL>(w3 + p);
                TV u = TVec.Load(x0 + p);
                a00 = TVec.Fma(u, v0, a00);
                a01 = TVec.Fma(u, v1, a01);
                a02 = TVec.Fma(u, v2, a02);
                a03 = TVec.Fma(u, v3, a03);
                u = TVec.Load(x1 + p);
                a10 = TVec.Fma(u, v0, a10);
                a11 = TVec.Fma(u, v1, a11);
                a12 = TVec.Fma(u, v2, a12);
                a13 = TVec.Fma(u, v3, a13);
                u = TVec.Load(x2 + p);
                a20 = TVec.Fma(u, v0, a20);
                a21 = TVec.Fma(u, v1, a21);
                a22 = TVec.Fma(u, v2, a22);
                a23 = TVec.Fma(u, v3, a23);
                u = TVec.Load(x3 + p);
                a30 = TVec.Fma(u, v0, a30);
                a31 = TVec.Fma(u, v1, a31);
                a32 = TVec.Fma(u, v2, a32);
                a33 = TVec.Fma(u, v3, a33);
            }

            // sums[c·4 + i] = the lanes of a_ic summed: on the 512-bit path all 16 at once (LaneSums16), else one by one.
            if (typeof(TV) == typeof(Vector512<float>))
            {
                Vector512.Store(LaneSums16(As512(a00), As512(a01), As512(a02), As512(a03), As512(a10), As512(a11), As512(a12), As512(a13),
                    As512(a20), As512(a21), As512(a22), As512(a23), As512(a30), As512(a31), As512(a32), As512(a33)), sums);
            }
            else
            {
                (sums[0], sums[4], sums[8], sums[12]) = (TVec.Sum(a00), TVec.Sum(a01), TVec.Sum(a02), TVec.Sum(a03));
                (sums[1], sums[5], sums[9], sums[13]) = (TVec.Sum(a10), TVec.Sum(a11), TVec.Sum(a12), TVec.Sum(a13));
                (sums[2], sums[6], sums[10], sums[14]) = (TVec.Sum(a20), TVec.Sum(a21), TVec.Sum(a22), TVec.Sum(a23));
                (sums[3], sums[7], sums[11], sums[15]) = (TVec.Sum(a30), TVec.Sum(a31), TVec.Sum(a32), TVec.Sum(a33));
            }

            for (int i = 0; i < rows; i++)
            {
                float* xi = x0 + ((long)i * k);
                for (int c = 0; c < count; c++)
                {
                    T* wc = w + ((long)c * k);
                    float s = sums[(c * Tile) + i];
                    for (int p = kv; p < k; p++)
                    {
                        s += xi[p] * TL.Load(wc + p);
                    }

                    y[((long)(r + i) * ldy) + c] = s;
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> As512<TV>(TV v)
        where TV : unmanaged => Unsafe.As<TV, Vector512<float>>(ref v);

    /// <summary>
    /// The lane sums of the 16 accumulators a[i·4 + c] (x row i, weight row c) in one vector: result[c·4 + i] = Σ lanes of a[i·4 + c].
    /// A transpose-and-add tree (8 + 4 + 2 + 1 vector adds, two shuffles each) in place of 16 separate horizontal sums (about a
    /// third of the instructions; at in = 768 the separate sums cost ~10 % of the tile's FMAs). Each sum is the pairwise tree
    /// lane j + j+8, then j + j+4, j + j+2, j + j+1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> LaneSums16(
        Vector512<float> a00, Vector512<float> a01, Vector512<float> a02, Vector512<float> a03,
        Vector512<float> a10, Vector512<float> a11, Vector512<float> a12, Vector512<float> a13,
        Vector512<float> a20, Vector512<float> a21, Vector512<float> a22, Vector512<float> a23,
        Vector512<float> a30, Vector512<float> a31, Vector512<float> a32, Vector512<float> a33)
    {
        // Levels 1 and 2: quarter c of row i's vector holds 4 partial sums of a_ic.
        var r0 = Quarters(Halves(a00, a01), Halves(a02, a03));
        var r1 = Quarters(Halves(a10, a11), Halves(a12, a13));
        var r2 = Quarters(Halves(a20, a21), Halves(a22, a23));
        var r3 = Quarters(Halves(a30, a31), Halves(a32, a33));

        // Level 3: per quarter, [row 0 (x0 + x2), row 1 (x0 + x2), row 0 (x1 + x3), row 1 (x1 + x3)], and rows 2, 3 alike.
        var w01 = (Avx512F.UnpackLow(r0, r1) + Avx512F.UnpackHigh(r0, r1)).AsDouble();
        var w23 = (Avx512F.UnpackLow(r2, r3) + Avx512F.UnpackHigh(r2, r3)).AsDouble();

        // Level 4: per quarter c, [row 0, row 1, row 2, row 3].
        return Avx512F.UnpackLow(w01, w23).AsSingle() + Avx512F.UnpackHigh(w01, w23).AsSingle();
    }

    /// <summary>[a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3] in 128-bit quarters (lane j + lane j+8 of each).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Halves(Vector512<float> a, Vector512<float> b) =>
        Avx512F.Shuffle4x128(a, b, 0x44) + Avx512F.Shuffle4x128(a, b, 0xEE);

    /// <summary>From two <see cref="Halves"/> results (a, b) and (c, d): quarter t = the 4 partial sums of the t-th of a, b, c, d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Quarters(Vector512<float> ab, Vector512<float> cd) =>
        Avx512F.Shuffle4x128(ab, cd, 0x88) + Avx512F.Shuffle4x128(ab, cd, 0xDD);
}
