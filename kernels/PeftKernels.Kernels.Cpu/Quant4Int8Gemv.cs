// Integer 4-bit decode GEMV: y [n, out] = x [n, in] · Wᵀ + bias, W a QuantizedWeight [out, in]
// (NF4/FP4, any blocksize, with or without double quantization), for small n (decode).
// The fp32 path (Quant4Matmul) decodes every weight to fp32 and spends one FMA per weight;
// this one reads the same packed bytes and works on integers, as llama.cpp's Q4_0 does:
//   activations: each row of x quantized per chunk of 32 to int8, q = round(x·127/max|x|),
//                scale sx = max|x|/127 (once per call; in % 32 == 0).
//   weights:     the 16 code values as int8, t8 = round(table·127), table scale 1/127; a
//                byte shuffle is the lookup (16 codes fit one 128-bit lane).
//   dot:         per chunk, 32 int8·int8 products summed exactly into 8 int32 lanes:
//                Avx512BW / Avx2 MultiplyAddAdjacent (|w|·sign(q, w) as u8·s8 pairs → s16, no
//                saturation since 2·127·127 < 2¹⁵; then s16 pairs → s32), or AvxVnni's
//                u8·s8 dot where the processor has it (the same lanes, the same integers), or,
//                on the Vector512 path, the native AVX512-VNNI rows (Quant4Int8Native.cs,
//                native/q4_int8_kernels.c: vpdpbusd, 4 weight rows per activation load; chosen by
//                KernelOptions.Int8Kernel, Auto where the CPU and the library have them).
//   scale:       each chunk's lanes × (sx · (absmax · 1/127)) accumulated in fp32 with FMA
//                into 16 accumulators (even chunks 0..7, odd chunks 8..15), then reduced in
//                a fixed order: bit-identical on every SIMD path and thread count, and equal
//                to Quant4Int8GemvReference.
// Error against the exact fp32 dequant GEMV (per output; stated in the reference's header,
// measured in Quant4Int8GemvTests): Σ_i |x_i|·absmax_i/254 + sx_i·|w_i|/2 + sx_i·absmax_i/508.
// The exact path stays the default; this one is chosen by the caller.
// Forward is two phases, also public for a decode engine that splits the columns over its own threads:
// QuantizeActivations (x → int8 + scales, once per input) and Rows (columns [j0, j1) on the calling
// thread); both allocate nothing, and Rows gives Forward's columns bit for bit.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Integer 4-bit GEMV (int8 activations · int8 code table) for decode: y = x·Wᵀ + bias, approximately.</summary>
public static unsafe class Quant4Int8Gemv
{
    /// <summary>Elements per activation chunk (one fp32 scale each); inFeatures must be a multiple of it.</summary>
    public const int Chunk = 32;

    private const float TableScale = 1f / 127f;

    /// <summary>
    /// y [n, out] = x [n, in] · Wᵀ + bias (bias empty or [out]) with int8 activations and an int8 code
    /// table; <paramref name="inFeatures"/> must be a multiple of <see cref="Chunk"/>.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> x, QuantizedWeight w, ReadOnlySpan<float> bias, Span<float> y,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(w);
        Quant4MatmulShapes.Forward(w.Shape, x.Length, bias.Length, y.Length, n, inFeatures, outFeatures);
        if (inFeatures % Chunk != 0)
        {
            throw new ArgumentException($"inFeatures must be a multiple of {Chunk} for the integer 4-bit GEMV, got {inFeatures}.", nameof(inFeatures));
        }

        if (n == 0)
        {
            return;
        }

        var path = IntegerPath(options.ResolvePath());
        bool native = Quant4Int8Native.Use(options.Int8Kernel, path);
        int threads = options.ResolveThreads();
        int scaleLength = ScaleLength(n, inFeatures, path);
        sbyte[] q = ArrayPool<sbyte>.Shared.Rent(n * inFeatures);
        float[] sx = ArrayPool<float>.Shared.Rent(scaleLength);
        try
        {
            QuantizeRows(x, n, inFeatures, q, sx, path == SimdPath.Vector512);
            fixed (byte* pw = w.Packed)
            fixed (float* pabs = w.AbsmaxFp32(), pb = bias, py = y, psx = sx, pnested = w.NestedAbsmax)
            fixed (sbyte* pq = q)
            fixed (byte* pcodes = w.NestedCodes)
            {
                var job = new Job(pw, pabs, new NestedScales(pcodes, pnested, w.NestedOffset), pq, psx, bias.Length == 0 ? null : pb, py, Table8(w.Type), n, inFeatures, outFeatures,
                    System.Numerics.BitOperations.Log2((uint)w.Blocksize), path, native);
                int parts = Math.Max(1, Math.Min(threads, outFeatures / 64));
                CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
                {
                    var (j0, j1) = CpuParallel.Split(outFeatures, parts, part);
                    job.Run(j0, j1);
                });
            }
        }
        finally
        {
            ArrayPool<sbyte>.Shared.Return(q);
            ArrayPool<float>.Shared.Return(sx);
        }
    }

    /// <summary>
    /// The floats of <see cref="QuantizeActivations"/>' scales for <paramref name="m"/> rows on <paramref name="path"/>: m·in/32
    /// chunk scales, and on the 512-bit path (AVX-512BW) 8 more per chunk (each chunk pair's scale vector).
    /// </summary>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static int ScaleLength(int m, int inFeatures, SimdPath path) =>
        m * (inFeatures / Chunk) * (IntegerPath(new KernelOptions(1, path).ResolvePath()) == SimdPath.Vector512 ? 9 : 1);

    /// <summary>
    /// The first phase of <see cref="Forward"/>: each row of x [m, in] quantized per chunk of 32 to int8 with one fp32 scale,
    /// in the lane order that <see cref="Rows"/> on the same <paramref name="path"/> reads. No allocation.
    /// </summary>
    /// <param name="x">Activations [m, inFeatures].</param>
    /// <param name="m">Rows.</param>
    /// <param name="inFeatures">Input features, a multiple of <see cref="Chunk"/>.</param>
    /// <param name="qx">Output int8 activations [m, inFeatures] (lane order, not element order).</param>
    /// <param name="scales">Output scales, <see cref="ScaleLength"/>(m, inFeatures, path) floats.</param>
    /// <param name="path">The SIMD path <see cref="Rows"/> will run on (the 512-bit one stores chunk pairs interleaved).</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, or inFeatures is not a multiple of <see cref="Chunk"/>.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static void QuantizeActivations(ReadOnlySpan<float> x, int m, int inFeatures, Span<sbyte> qx, Span<float> scales, SimdPath path = SimdPath.Auto)
    {
        var resolved = CheckPhase(m, inFeatures, qx.Length, scales.Length, path);
        Check.Length("x", x.Length, (long)m * inFeatures, "m·inFeatures");
        QuantizeRows(x, m, inFeatures, qx, scales, resolved == SimdPath.Vector512);
    }

    /// <summary>
    /// The second phase of <see cref="Forward"/> on the calling thread, for output columns [j0, j1) only (others untouched), no bias:
    /// y[r, j] = the integer dot of row r of <paramref name="qx"/> with weight row j; equal bit for bit to Forward's y without bias.
    /// No allocation.
    /// </summary>
    /// <param name="qx">Int8 activations [m, inFeatures] from <see cref="QuantizeActivations"/> on the same path.</param>
    /// <param name="scales">Their scales (<see cref="ScaleLength"/> floats).</param>
    /// <param name="w">4-bit weight [outFeatures, inFeatures].</param>
    /// <param name="y">Output [m, outFeatures]; columns [j0, j1) written.</param>
    /// <param name="m">Rows.</param>
    /// <param name="inFeatures">Input features, a multiple of <see cref="Chunk"/>.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="j0">First output column.</param>
    /// <param name="j1">End of the output columns (exclusive), j0 ≤ j1 ≤ outFeatures.</param>
    /// <param name="path">SIMD path, the one the activations were quantized for.</param>
    /// <param name="kernel">Row kernel: Auto (native AVX512-VNNI where available on the Vector512 path), Avx512Vnni or Managed.</param>
    /// <exception cref="ArgumentException">A length or w's shape differs from what the dims imply, or the column range is out of range.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor, or <paramref name="kernel"/> cannot run here.</exception>
    public static void Rows(ReadOnlySpan<sbyte> qx, ReadOnlySpan<float> scales, QuantizedWeight w, Span<float> y,
        int m, int inFeatures, int outFeatures, int j0, int j1, SimdPath path, Int8Kernel kernel = Int8Kernel.Auto)
    {
        ArgumentNullException.ThrowIfNull(w);
        var resolved = CheckPhase(m, inFeatures, qx.Length, scales.Length, path);
        bool native = Quant4Int8Native.Use(kernel, resolved);
        if (w.Shape.Length != 2 || w.Shape[0] != outFeatures || w.Shape[1] != inFeatures)
        {
            throw new ArgumentException($"w has shape [{string.Join(", ", w.Shape)}]; expected [{outFeatures}, {inFeatures}] ([outFeatures, inFeatures]).", nameof(w));
        }

        Check.Length("y", y.Length, (long)m * outFeatures, "m·outFeatures");
        if (j0 < 0 || j1 < j0 || j1 > outFeatures)
        {
            throw new ArgumentOutOfRangeException(nameof(j1), $"the column range [{j0}, {j1}) must lie in [0, outFeatures {outFeatures}].");
        }

        if (j0 == j1 || m == 0)
        {
            return;
        }

        fixed (byte* pw = w.Packed)
        fixed (float* pabs = w.AbsmaxFp32(), py = y, psx = scales, pnested = w.NestedAbsmax)
        fixed (sbyte* pq = qx)
        fixed (byte* pcodes = w.NestedCodes)
        {
            new Job(pw, pabs, new NestedScales(pcodes, pnested, w.NestedOffset), pq, psx, null, py, Table8(w.Type), m, inFeatures, outFeatures,
                System.Numerics.BitOperations.Log2((uint)w.Blocksize), resolved, native).Run(j0, j1);
        }
    }

    /// <summary>The path the integer kernels run for a resolved path: the 512-bit one needs AVX-512BW.</summary>
    private static SimdPath IntegerPath(SimdPath path) =>
        path == SimdPath.Vector512 && !Avx512BW.IsSupported ? SimdPath.Vector256 : path;

    /// <summary>Validates the dims and the activation buffers shared by the two phases; returns the integer path.</summary>
    private static SimdPath CheckPhase(int m, int inFeatures, int qLength, int scaleLength, SimdPath path)
    {
        Check.NonNegative(m, "m");
        Check.Positive(inFeatures, "inFeatures");
        if (inFeatures % Chunk != 0)
        {
            throw new ArgumentException($"inFeatures must be a multiple of {Chunk} for the integer 4-bit GEMV, got {inFeatures}.", nameof(inFeatures));
        }

        var resolved = IntegerPath(new KernelOptions(1, path).ResolvePath());
        Check.Length("qx", qLength, (long)m * inFeatures, "m·inFeatures");
        Check.Length("scales", scaleLength, ScaleLength(m, inFeatures, resolved), "ScaleLength(m, inFeatures, path)");
        return resolved;
    }

    /// <summary>The 16 code values of <paramref name="type"/> as int8: round(table·127).</summary>
    private static Vector128<sbyte> Table8(Quant4Type type)
    {
        var table = Quant4Codes.Table(type);
        sbyte* t8 = stackalloc sbyte[16];
        for (int k = 0; k < 16; k++)
        {
            t8[k] = (sbyte)MathF.Round(table[k] * 127f);
        }

        return Vector128.Load(t8);
    }

    // Each chunk's int8 values are stored in lane order: the 16 even elements, then the 16 odd
    // ones (the high and the low nibbles of the chunk's 16 packed bytes). With pairs (the
    // Vector512 path) two chunks c, c + 1 (c even) are interleaved as the 512-bit nibble split
    // holds them: evens of c, evens of c + 1, odds of c, odds of c + 1; and after the n·chunks
    // scales each pair gets its scale vector [sx_c ×4, sx_c+1 ×4, sx_c ×4, sx_c+1 ×4].
    // The paired chunks go through Quant4Int8Activations.Pairs where AVX-512F is there (the same bits); useScalar forces
    // this loop for every chunk (the tests' reference).
    internal static void QuantizeRows(ReadOnlySpan<float> x, int n, int inFeatures, Span<sbyte> q, Span<float> sx, bool pairs, bool useScalar = false)
    {
        int chunks = inFeatures / Chunk;
        for (int r = 0; r < n; r++)
        {
            int vectorized = 0;
            if (pairs && !useScalar && Quant4Int8Activations.IsSupported)
            {
                fixed (float* px = x, psx = sx)
                fixed (sbyte* pq = q)
                {
                    vectorized = Quant4Int8Activations.Pairs(px + (r * inFeatures), pq + (r * inFeatures), psx + (r * chunks), chunks) ? chunks & ~1 : 0;
                }
            }

            for (int c = vectorized; c < chunks; c++)
            {
                int e0 = (r * inFeatures) + (c * Chunk);
                var v = x.Slice(e0, Chunk);
                float max = 0f;
                foreach (float e in v)
                {
                    max = MathF.Max(max, MathF.Abs(e));
                }

                float inverse = max == 0f ? 0f : 127f / max;
                sx[(r * chunks) + c] = max == 0f ? 0f : max / 127f;
                bool paired = pairs && (c | 1) < chunks;
                int pairBase = (r * inFeatures) + ((c & ~1) * Chunk) + ((c & 1) * 16);
                for (int i = 0; i < Chunk; i++)
                {
                    int dst = paired ? pairBase + ((i & 1) * Chunk) + (i >> 1) : e0 + ((i & 1) * 16) + (i >> 1);
                    q[dst] = (sbyte)MathF.Round(v[i] * inverse);
                }
            }

            for (int c = 0; pairs && c + 1 < chunks; c += 2)
            {
                int at = (n * chunks) + (((r * chunks) + c) * 8);
                for (int l = 0; l < 16; l++)
                {
                    sx[at + l] = sx[(r * chunks) + c + ((l >> 2) & 1)];
                }
            }
        }
    }

    private readonly struct Job(byte* w, float* absmax, NestedScales nested, sbyte* q, float* sx, float* bias, float* y, Vector128<sbyte> table,
        int n, int inFeatures, int outFeatures, int blockShift, SimdPath path, bool native)
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run(int j0, int j1)
        {
            int chunks = inFeatures / Chunk;
            bool onePairScale = inFeatures % (2 * Chunk) == 0 && blockShift >= 6; // both chunks of a pair in one weight block
            if (native)
            {
                var t8 = table;
                Quant4Int8Native.Rows(w, absmax, nested, q, sx, y, (sbyte*)&t8, n, inFeatures, outFeatures, blockShift, onePairScale, j0, j1);
                for (int r = 0; bias != null && r < n; r++)
                {
                    for (int j = j0; j < j1; j++)
                    {
                        y[((long)r * outFeatures) + j] += bias[j];
                    }
                }

                return;
            }

            float* acc = stackalloc float[16];
            for (int j = j0; j < j1; j++)
            {
                long e0 = (long)j * inFeatures;
                byte* row = w + (e0 >> 1);
                for (int r = 0; r < n; r++)
                {
                    sbyte* qr = q + ((long)r * inFeatures);
                    float* sr = sx + ((long)r * chunks);
                    float* sv = sx + ((long)n * chunks) + ((long)r * chunks * 8);
                    float v;
                    if (path == SimdPath.Vector512)
                    {
                        v = Quant4Int8Dot.Row512(row, qr, sr, sv, absmax, e0, blockShift, chunks, table, onePairScale);
                    }
                    else if (path == SimdPath.Vector256)
                    {
                        v = Quant4Int8Dot.Row256(row, qr, sr, absmax, e0, blockShift, chunks, table);
                    }
                    else
                    {
                        new Span<float>(acc, 16).Clear();
                        Quant4Int8Dot.ScalarChunks(row, qr, sr, absmax, e0, blockShift, 0, chunks, table, acc);
                        v = Quant4Int8Dot.Reduce16(acc);
                    }

                    y[((long)r * outFeatures) + j] = bias == null ? v : v + bias[j];
                }
            }
        }
    }
}
