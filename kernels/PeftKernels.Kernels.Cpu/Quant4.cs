// 4-bit blockwise quantization byte-compatible with bitsandbytes (docs/formats/4bit-formats.md#blockwise-quantization):
//   absmax[b] = max |x| over block b; full blocks scale by the fp32 reciprocal 1f/absmax,
//   the partial last block divides (and stores the 1e-38-clamped absmax); s is clamped to
//   [−1, 1] and bucketized over fp32 midpoints of the sorted table (ties → lower code);
//   packed byte i = code[2i] << 4 | code[2i+1], odd length padded with code(0).
//   dequantize: x' = table[code] · absmax[block].
// Double quantization of the absmax: offset = mean(absmax), then 8-bit blockwise (256) with
// the dynamic map; absmax' = dyn[q] · nested[i/256] + offset (two fp32 roundings, no FMA).
// Blocks are independent, so threads take contiguous block ranges (bit-identical results).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>NF4/FP4 quantize and dequantize (fp32, bf16 and f16 in and out) and double quantization of the scales.</summary>
public static unsafe partial class Quant4
{
    /// <summary>The block size of the nested (double) quantization of the absmax.</summary>
    public const int NestedBlocksize = Quant4Blocks.NestedBlocksize;

    /// <summary>True for the block sizes bitsandbytes allows: 32, 64, …, 4096.</summary>
    public static bool IsValidBlocksize(int blocksize) => Quant4Blocks.IsValidBlocksize(blocksize);

    /// <summary>Blocks of a tensor of <paramref name="count"/> elements.</summary>
    public static int BlockCount(long count, int blocksize) => Quant4Blocks.BlockCount(count, blocksize);

    /// <summary>Quantizes fp32 values: <paramref name="packed"/> gets (n+1)/2 bytes, <paramref name="absmax"/> one value per block.</summary>
    public static void Quantize(ReadOnlySpan<float> x, Span<byte> packed, Span<float> absmax, Quant4Type type, int blocksize, KernelOptions options = default)
    {
        ValidateQuantize(x.Length, packed.Length, absmax.Length, blocksize);
        fixed (float* px = x)
        {
            var src = new FloatSource(px);
            QuantizeCore(ref src, x.Length, packed, absmax, type, blocksize, options);
        }
    }

    /// <summary>Quantizes bf16 values (bit patterns), widened exactly to fp32 first.</summary>
    public static void Quantize(ReadOnlySpan<ushort> xBf16, Span<byte> packed, Span<float> absmax, Quant4Type type, int blocksize, KernelOptions options = default)
    {
        ValidateQuantize(xBf16.Length, packed.Length, absmax.Length, blocksize);
        fixed (ushort* px = xBf16)
        {
            var src = new Bf16Source(px);
            QuantizeCore(ref src, xBf16.Length, packed, absmax, type, blocksize, options);
        }
    }

    /// <summary>Quantizes f16 values, widened exactly to fp32 first.</summary>
    public static void Quantize(ReadOnlySpan<Half> xF16, Span<byte> packed, Span<float> absmax, Quant4Type type, int blocksize, KernelOptions options = default)
    {
        ValidateQuantize(xF16.Length, packed.Length, absmax.Length, blocksize);
        fixed (Half* px = xF16)
        {
            var src = new HalfSource(px);
            QuantizeCore(ref src, xF16.Length, packed, absmax, type, blocksize, options);
        }
    }

    /// <summary>Dequantizes to fp32: output[i] = table[code i] · absmax[i / blocksize].</summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, Quant4Type type, int blocksize, Span<float> output, KernelOptions options = default)
    {
        ValidateQuantize(output.Length, packed.Length, absmax.Length, blocksize);
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int n = output.Length;
        float[] table = Quant4Codes.Search(type).Values;
        fixed (byte* pp = packed)
        fixed (float* pa = absmax, po = output)
        {
            byte* ppp = pp;
            float* ppa = pa, ppo = po;
            int blocks = BlockCount(n, blocksize);
            int parts = Math.Max(1, Math.Min(threads, blocks / 16));
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (b0, b1) = CpuParallel.Split(blocks, parts, part);
                long e0 = (long)b0 * blocksize, e1 = Math.Min(n, (long)b1 * blocksize);
                Quant4Simd.DequantizeRun(ppp, ppa, table, blocksize, e0, (int)(e1 - e0), ppo + e0, path);
            });
        }
    }

    /// <summary>Dequantizes to bf16 bit patterns (fp32 result rounded to nearest even).</summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, Quant4Type type, int blocksize, Span<ushort> outputBf16, KernelOptions options = default)
    {
        fixed (ushort* po = outputBf16)
        {
            DequantizeNarrowing(packed, absmax, type, blocksize, outputBf16.Length, new Bf16Sink(po), options);
        }
    }

    /// <summary>Dequantizes to f16 (fp32 result rounded to nearest even).</summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, Quant4Type type, int blocksize, Span<Half> outputF16, KernelOptions options = default)
    {
        fixed (Half* po = outputF16)
        {
            DequantizeNarrowing(packed, absmax, type, blocksize, outputF16.Length, new HalfSink(po), options);
        }
    }

    // Dequantizes a few blocks at a time into an L1-sized fp32 buffer and narrows from there, so
    // a 16-bit output never needs a whole fp32 copy of the tensor.
    private static void DequantizeNarrowing<TSink>(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, Quant4Type type, int blocksize,
        int n, TSink sink, KernelOptions options)
        where TSink : struct, IElementSink
    {
        ValidateQuantize(n, packed.Length, absmax.Length, blocksize);
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        float[] table = Quant4Codes.Search(type).Values;
        int blocks = BlockCount(n, blocksize);
        int chunkBlocks = Math.Max(1, 4096 / blocksize);
        fixed (byte* pp = packed)
        fixed (float* pa = absmax)
        {
            byte* ppp = pp;
            float* ppa = pa;
            int parts = Math.Max(1, Math.Min(threads, blocks / 16));
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (b0, b1) = CpuParallel.Split(blocks, parts, part);
                float* chunk = stackalloc float[chunkBlocks * blocksize];
                for (int b = b0; b < b1; b += chunkBlocks)
                {
                    long e0 = (long)b * blocksize;
                    int count = (int)(Math.Min(n, (long)Math.Min(b1, b + chunkBlocks) * blocksize) - e0);
                    Quant4Simd.DequantizeRun(ppp, ppa, table, blocksize, e0, count, chunk, path);
                    sink.Narrow(chunk, e0, count);
                }
            });
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(float x, bool partial, float reciprocal, float clamped) =>
        Math.Clamp(partial ? x / clamped : x * reciprocal, -1f, 1f);

    private static float BlockScale(ReadOnlySpan<float> block, bool partial, out float stored, out float clamped)
    {
        // max |x| is exact in any order, so the vector reduction equals the scalar one.
        float max = 0f;
        int i = 0;
        if (Vector512.IsHardwareAccelerated && block.Length >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= block.Length; i += 16)
            {
                acc = Vector512.Max(acc, Vector512.Abs(Vector512.Create(block.Slice(i, 16))));
            }

            for (int lane = 0; lane < 16; lane++)
            {
                max = Math.Max(max, acc[lane]);
            }
        }

        for (; i < block.Length; i++)
        {
            max = Math.Max(max, Math.Abs(block[i]));
        }

        clamped = Math.Max(max, 1e-38f);
        stored = partial ? clamped : max;
        return 1f / clamped;
    }

    private static void QuantizeCore<TSource>(ref TSource source, int n, Span<byte> packed, Span<float> absmax, Quant4Type type, int blocksize, KernelOptions options)
        where TSource : struct, IElementSource
    {
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        var search = Quant4Codes.Search(type);
        int blocks = BlockCount(n, blocksize);
        var src = source;
        fixed (byte* pp = packed)
        fixed (float* pa = absmax)
        {
            byte* ppp = pp;
            float* ppa = pa;
            int parts = Math.Max(1, Math.Min(threads, blocks / 16));
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (b0, b1) = CpuParallel.Split(blocks, parts, part);
                float* x = stackalloc float[blocksize];
                byte* codes = stackalloc byte[blocksize + 1];
                for (int b = b0; b < b1; b++)
                {
                    int start = b * blocksize, len = Math.Min(blocksize, n - start);
                    src.Widen(start, len, x);
                    ppa[b] = QuantizeBlock(x, len, len < blocksize, search, path, codes);
                    if ((len & 1) != 0)
                    {
                        codes[len] = search.ZeroCode;
                    }

                    PackNibbles(codes, (len + 1) >> 1, ppp + (start >> 1));
                }
            });
        }
    }

    /// <summary>dst[i] = codes[2i] &lt;&lt; 4 | codes[2i + 1] for i &lt; bytes (first element in the high nibble).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackNibbles(byte* codes, int bytes, byte* dst)
    {
        int i = 0;
        if (Vector128.IsHardwareAccelerated)
        {
            for (; i + 16 <= bytes; i += 16)
            {
                // Each 16-bit lane holds (code[2i] | code[2i+1] << 8); narrowing keeps the low byte.
                var lo = Vector128.Load((ushort*)(codes + (2 * i)));
                var hi = Vector128.Load((ushort*)(codes + (2 * i) + 16));
                var packedLo = ((lo & Vector128.Create((ushort)0xF)) << 4) | (lo >> 8);
                var packedHi = ((hi & Vector128.Create((ushort)0xF)) << 4) | (hi >> 8);
                Vector128.Narrow(packedLo, packedHi).Store(dst + i);
            }
        }

        for (; i < bytes; i++)
        {
            dst[i] = (byte)((codes[2 * i] << 4) | codes[(2 * i) + 1]);
        }
    }

    /// <summary>Codes of one block into <paramref name="codes"/>; returns the absmax to store.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float QuantizeBlock(float* x, int len, bool partial, SearchTable search, SimdPath path, byte* codes)
    {
        float reciprocal = BlockScale(new ReadOnlySpan<float>(x, len), partial, out float stored, out float clamped);
        float[] mids = search.Midpoints;
        byte[] map = search.SortedToCode;
        int i = 0;
        if (path == SimdPath.Vector512 && !partial)
        {
            var r = Vector512.Create(reciprocal);
            var map512 = Vector512.Create(map[0], map[1], map[2], map[3], map[4], map[5], map[6], map[7],
                map[8], map[9], map[10], map[11], map[12], map[13], map[14], map[15]).AsInt32();
            for (; i + 16 <= len; i += 16)
            {
                var s = Vector512.Clamp(Vector512.Load(x + i) * r, Vector512.Create(-1f), Vector512<float>.One);
                var c = Vector512<int>.Zero;
                for (int m = 0; m < mids.Length; m++)
                {
                    c -= Vector512.LessThan(Vector512.Create(mids[m]), s).AsInt32();
                }

                Avx512F.ConvertToVector128Byte(Avx512F.PermuteVar16x32(map512, c)).Store(codes + i);
            }
        }
        else if (path == SimdPath.Vector256 && !partial)
        {
            var r = Vector256.Create(reciprocal);
            int* count = stackalloc int[8];
            for (; i + 8 <= len; i += 8)
            {
                var s = Vector256.Clamp(Vector256.Load(x + i) * r, Vector256.Create(-1f), Vector256<float>.One);
                var c = Vector256<int>.Zero;
                for (int m = 0; m < mids.Length; m++)
                {
                    c -= Vector256.LessThan(Vector256.Create(mids[m]), s).AsInt32();
                }

                c.Store(count);
                for (int q = 0; q < 8; q++)
                {
                    codes[i + q] = map[count[q]];
                }
            }
        }

        for (; i < len; i++)
        {
            codes[i] = search.Code(Scale(x[i], partial, reciprocal, clamped));
        }

        return stored;
    }

    private static void ValidateQuantize(int n, int packed, int absmax, int blocksize)
    {
        if (!IsValidBlocksize(blocksize))
        {
            throw new ArgumentException($"blocksize must be a power of two in 32..4096, got {blocksize}.", nameof(blocksize));
        }

        Check.Length("packed", packed, ((long)n + 1) / 2, "(n + 1) / 2");
        Check.Length("absmax", absmax, BlockCount(n, blocksize), "ceil(n / blocksize)");
    }

    private interface IElementSource
    {
        void Widen(int start, int count, float* dst);
    }

    private readonly struct FloatSource(float* p) : IElementSource
    {
        public void Widen(int start, int count, float* dst) => new ReadOnlySpan<float>(p + start, count).CopyTo(new Span<float>(dst, count));
    }

    private readonly struct Bf16Source(ushort* p) : IElementSource
    {
        public void Widen(int start, int count, float* dst)
        {
            for (int i = 0; i < count; i++)
            {
                dst[i] = Bf16.ToSingle(p[start + i]);
            }
        }
    }

    private interface IElementSink
    {
        void Narrow(float* src, long start, int count);
    }

    private readonly struct Bf16Sink(ushort* p) : IElementSink
    {
        public void Narrow(float* src, long start, int count) =>
            Bf16.FromSingle(new ReadOnlySpan<float>(src, count), new Span<ushort>(p + start, count));
    }

    private readonly struct HalfSink(Half* p) : IElementSink
    {
        public void Narrow(float* src, long start, int count)
        {
            for (int i = 0; i < count; i++)
            {
                p[start + i] = (Half)src[i];
            }
        }
    }

    private readonly struct HalfSource(Half* p) : IElementSource
    {
        public void Widen(int start, int count, float* dst)
        {
            for (int i = 0; i < count; i++)
            {
                dst[i] = (float)p[start + i];
            }
        }
    }
}
