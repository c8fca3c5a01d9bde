// DoRA's weight norm (docs/formats/methods.md#dora-norm): per output row i of V = W + s·B·A,
//   norm_i = ‖V_i,:‖₂ = sqrt(Σ_p (W_ip + s·Σ_q B_iq·A_qp)²)
// Shapes, row-major: W [out, in] (a WeightOperand: fp32, bf16 bit patterns, fp16, or a 4-bit QuantizedWeight),
// A [r, in], B [out, r], norms [out]. DoRA treats the norm as a constant in backward, so this
// op has no backward.
// B·A is never materialised: a block of rows of W is widened or dequantized into a scratch
// buffer (L2-sized); then each row V_i = W_i + Σ_q (s·B_iq)·A_q is updated in place, four
// rows of A per pass (one load and store of V per four FMAs; the scalar path rounds each
// product and sum separately, the vector paths fuse them), and its squares are summed in
// double lanes. Every row is computed by the same code whatever the blocking or
// the thread count, so the norms are bit-identical for any thread count.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Row norms ‖W + s·B·A‖₂ of DoRA's adapted weight, without materialising B·A.</summary>
public static unsafe class DoraNorm
{
    private const int ScratchFloats = 32 * 1024; // 128 KiB of rows per block, comfortably inside L2
    private const int MaxBlockRows = 16;
    private const long ParallelThreshold = 32 * 1024;

    /// <summary>norms[i] = ‖w[i, :] + scale·(b·a)[i, :]‖₂, over any storage of the base weight.</summary>
    /// <param name="w">Base weight [outFeatures, inFeatures]: fp32, bf16 or fp16 (widened exactly to fp32 one block of rows at a time) or 4-bit (dequantized one block of rows at a time).</param>
    /// <param name="a">LoRA A [rank, inFeatures].</param>
    /// <param name="b">LoRA B [outFeatures, rank].</param>
    /// <param name="scale">LoRA scale s (alpha / r, or alpha / sqrt(r) with rsLoRA).</param>
    /// <param name="norms">Output [outFeatures].</param>
    /// <param name="inFeatures">Columns of w.</param>
    /// <param name="outFeatures">Rows of w.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A span's length or w's shape differs from what the dims imply, or a dim is not positive.</exception>
    public static void RowNorms(in WeightOperand w, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> norms,
        int inFeatures, int outFeatures, int rank, KernelOptions options = default)
    {
        DoraNormShapes.RowNorms(w.Count, a.Length, b.Length, norms.Length, inFeatures, outFeatures, rank);
        w.CheckShape(inFeatures, outFeatures);
        switch (w.Storage)
        {
            case WeightFormat.F32:
                fixed (float* pw = w.F32Span)
                {
                    Run(new Fp32Rows(pw, inFeatures), a, b, scale, norms, inFeatures, outFeatures, rank, options);
                }

                break;
            case WeightFormat.BF16:
                fixed (ushort* pw = w.Bf16Span)
                {
                    Run(new Bf16Rows(pw, inFeatures, options.ResolvePath()), a, b, scale, norms, inFeatures, outFeatures, rank, options);
                }

                break;
            case WeightFormat.F16:
                fixed (Half* pw = w.F16Span)
                {
                    Run(new F16Rows(pw, inFeatures), a, b, scale, norms, inFeatures, outFeatures, rank, options);
                }

                break;
            default:
                var q = w.Quantized;
                var path = options.ResolvePath();
                fixed (byte* pq = q.Packed)
                fixed (float* pabs = q.AbsmaxFp32())
                {
                    Run(new Quant4Rows(pq, pabs, Quant4Codes.Search(q.Type).Values, q.Blocksize, inFeatures, path), a, b, scale, norms,
                        inFeatures, outFeatures, rank, options);
                }

                break;
        }
    }

    private static void Run<TRows>(TRows rows, ReadOnlySpan<float> a, ReadOnlySpan<float> b, float scale, Span<float> norms,
        int inFeatures, int outFeatures, int rank, KernelOptions options)
        where TRows : struct, IRowSource
    {
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int blockRows = Math.Clamp(ScratchFloats / inFeatures, 1, MaxBlockRows);
        int blocks = (outFeatures + blockRows - 1) / blockRows;
        long work = (long)outFeatures * inFeatures * (rank + 1);
        int parts = work < ParallelThreshold ? 1 : Math.Min(threads, blocks);
        fixed (float* pa = a, pb = b, pn = norms)
        {
            float* pas = pa, pbs = pb, pns = pn;
            CpuParallel.For(parts, threads, (part) =>
            {
                var scratch = new float[(long)blockRows * inFeatures];
                fixed (float* ps = scratch)
                {
                    var (k0, k1) = CpuParallel.Split(blocks, parts, part);
                    for (int k = k0; k < k1; k++)
                    {
                        int i0 = k * blockRows, count = Math.Min(blockRows, outFeatures - i0);
                        Block(rows, pas, pbs, scale, ps, pns, i0, count, inFeatures, rank, path);
                    }
                }
            });
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block<TRows>(TRows rows, float* a, float* b, float scale, float* scratch, float* norms,
        int i0, int count, int inFeatures, int rank, SimdPath path)
        where TRows : struct, IRowSource
    {
        rows.Load(i0, count, scratch);
        for (int i = 0; i < count; i++)
        {
            float* v = scratch + ((long)i * inFeatures);
            float* bi = b + ((long)(i0 + i) * rank);
            int q = 0;
            for (; q + 4 <= rank; q += 4)
            {
                Update4(v, a + ((long)q * inFeatures), inFeatures, scale * bi[q], scale * bi[q + 1], scale * bi[q + 2], scale * bi[q + 3], path);
            }

            for (; q < rank; q++)
            {
                RowAxpy.Add(a + ((long)q * inFeatures), scale * bi[q], v, inFeatures, path);
            }

            norms[i0 + i] = (float)Math.Sqrt(SumOfSquares(v, inFeatures, path));
        }
    }

    /// <summary>v = (((v + c0·a₀) + c1·a₁) + c2·a₂) + c3·a₃ for four consecutive rows a₀..a₃ of A: one load and store of v per four FMAs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Update4(float* v, float* a, int length, float c0, float c1, float c2, float c3, SimdPath path)
    {
        float* a1 = a + length, a2 = a1 + length, a3 = a2 + length;
        int j = path switch
        {
            SimdPath.Vector512 => Update4<Vector512<float>, V512>(v, a, length, c0, c1, c2, c3),
            SimdPath.Vector256 => Update4<Vector256<float>, V256>(v, a, length, c0, c1, c2, c3),
            _ => 0,
        };

        for (; j < length; j++)
        {
            v[j] = (((v[j] + (c0 * a[j])) + (c1 * a1[j])) + (c2 * a2[j])) + (c3 * a3[j]);
        }
    }

    /// <summary><see cref="Update4(float*, float*, int, float, float, float, float, SimdPath)"/> over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Update4<TV, T>(float* v, float* a, int length, float c0, float c1, float c2, float c3)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        float* a1 = a + length, a2 = a1 + length, a3 = a2 + length;
        int w = T.Width, j = 0;
        TV v0 = T.Splat(c0), v1 = T.Splat(c1), v2 = T.Splat(c2), v3 = T.Splat(c3);
        for (; j <= length - w; j += w)
        {
            var x = T.Fma(v0, T.Load(a + j), T.Load(v + j));
            x = T.Fma(v1, T.Load(a1 + j), x);
            x = T.Fma(v2, T.Load(a2 + j), x);
            T.Store(v + j, T.Fma(v3, T.Load(a3 + j), x));
        }

        return j;
    }

    /// <summary>Σ v[j]² in double lanes (each fp32 value widened exactly, squared and summed in double).</summary>
    private static double SumOfSquares(float* v, int count, SimdPath path) => WideSums.SumOfSquares(v, count, path);

    /// <summary>Writes rows [row0, row0 + count) of the base weight, widened to fp32, contiguously at dst.</summary>
    private interface IRowSource
    {
        void Load(int row0, int count, float* dst);
    }

    private readonly struct Fp32Rows(float* w, int inFeatures) : IRowSource
    {
        public void Load(int row0, int count, float* dst)
        {
            long n = (long)count * inFeatures;
            Buffer.MemoryCopy(w + ((long)row0 * inFeatures), dst, n * sizeof(float), n * sizeof(float));
        }
    }

    private readonly struct Bf16Rows(ushort* w, int inFeatures, SimdPath path) : IRowSource
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Load(int row0, int count, float* dst)
        {
            ushort* src = w + ((long)row0 * inFeatures);
            long n = (long)count * inFeatures;
            long j = path switch
            {
                SimdPath.Vector512 => Widen<Vector512<float>, V512>(src, dst, n),
                SimdPath.Vector256 => Widen<Vector256<float>, V256>(src, dst, n),
                _ => 0,
            };

            for (; j < n; j++)
            {
                dst[j] = Bf16.ToSingle(src[j]);
            }
        }

        /// <summary>dst = src widened, over the whole vectors; returns where they end.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static long Widen<TV, T>(ushort* src, float* dst, long n)
            where TV : unmanaged
            where T : struct, IVec<TV>
        {
            long w = T.Width, j = 0;
            for (; j <= n - w; j += w)
            {
                T.Store(dst + j, T.LoadWidened<ushort, Bf16Load>(src + j));
            }

            return j;
        }
    }

    private readonly struct F16Rows(Half* w, int inFeatures) : IRowSource
    {
        public void Load(int row0, int count, float* dst)
        {
            int n = count * inFeatures;
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + ((long)row0 * inFeatures), n), new Span<float>(dst, n));
        }
    }

    private readonly struct Quant4Rows(byte* packed, float* absmax, float[] table, int blocksize, int inFeatures, SimdPath path) : IRowSource
    {
        public void Load(int row0, int count, float* dst) =>
            Quant4Simd.DequantizeRun(packed, absmax, table, blocksize, (long)row0 * inFeatures, count * inFeatures, dst, path);
    }
}
