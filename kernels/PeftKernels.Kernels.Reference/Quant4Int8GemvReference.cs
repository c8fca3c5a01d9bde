// The integer 4-bit decode GEMV, in plain C#: the specification the fast kernel
// (Quant4Int8Gemv) matches bit for bit on every SIMD path and with the native AVX512-VNNI rows.
// W is a 4-bit tensor [out, in] in bitsandbytes' layout (docs/formats/4bit-formats.md): packed
// codes, first element of a byte in its high nibble, one fp32 absmax per block of the flattened tensor.
//   chunks:      each row of x and of W splits into chunks of 32 elements (in % 32 == 0, so a
//                chunk never straddles a weight block: blocksizes are powers of two ≥ 32).
//   activations: per chunk c of row r, m = max |x|, sx = m / 127 and q = round(x · (127 / m))
//                (fp32, ties to even; m = 0 gives sx = 0, q = 0), so q ∈ [−127, 127].
//   table:       t8[k] = round(table[k] · 127) (int8), table scale 1/127.
//   lanes:       a chunk's 32 products are summed exactly on integers into 8 lanes; lane l
//                holds the 4 elements at positions 4l..4l+3 of the order (0, 2, …, 30, 1, 3, …, 31)
//                (the even elements, the high nibbles, then the odd ones), as the SIMD kernels hold them.
//   scale:       s = sx · (absmax[block] · (1/127)), two fp32 products.
//   accumulate:  acc[8·(c mod 2) + l] = fma(float(lane l), s, acc[8·(c mod 2) + l]) over the
//                chunks in order; then y = Reduce16(acc) (halves added, then 8 → 4 → 2 → 1 by
//                adding the upper half to the lower).
// Error against the exact fp32 dequant GEMV: per element |x − sx·q| ≤ sx/2 and
// |table − t8/127| ≤ 1/254, so |y − y_exact| ≤ Σ_i (|x_i|·absmax_i/254 + sx_i·|w_i|/2 + sx_i·absmax_i/508)
// plus fp32 rounding (the bound is measured in the tests).
namespace PeftKernels.Kernels.Reference;

/// <summary>Scalar integer 4-bit GEMV (int8 activations, int8 code table): the bit-exact specification.</summary>
public static class Quant4Int8GemvReference
{
    /// <summary>Elements per activation block (one int8 scale each).</summary>
    public const int Chunk = 32;

    /// <summary>The scale of the int8 code table (its values are round(table · 127)).</summary>
    public const float TableScale = 1f / 127f;

    /// <summary>The int8 code table: round(table[k] · 127), ties to even.</summary>
    public static sbyte[] Int8Table(ReadOnlySpan<float> table)
    {
        var result = new sbyte[table.Length];
        for (int k = 0; k < table.Length; k++)
        {
            result[k] = (sbyte)MathF.Round(table[k] * 127f);
        }

        return result;
    }

    /// <summary>Quantizes one chunk: q[i] = round(x[i] · (127 / max|x|)); returns the scale max|x| / 127.</summary>
    public static float QuantizeChunk(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        float max = 0f;
        foreach (float v in x)
        {
            max = MathF.Max(max, MathF.Abs(v));
        }

        if (max == 0f)
        {
            q[..x.Length].Clear();
            return 0f;
        }

        float inverse = 127f / max;
        for (int i = 0; i < x.Length; i++)
        {
            q[i] = (sbyte)MathF.Round(x[i] * inverse);
        }

        return max / 127f;
    }

    /// <summary>Position p (0..31) of the lane order holds chunk element <see cref="Element"/>(p).</summary>
    public static int Element(int position) => position < 16 ? 2 * position : (2 * (position - 16)) + 1;

    /// <summary>The 16 accumulators reduced: halves added, then 8 → 4 → 2 → 1 (upper half onto lower).</summary>
    public static float Reduce16(ReadOnlySpan<float> acc)
    {
        Span<float> v = stackalloc float[8];
        for (int l = 0; l < 8; l++)
        {
            v[l] = acc[l] + acc[8 + l];
        }

        for (int width = 4; width >= 1; width /= 2)
        {
            for (int l = 0; l < width; l++)
            {
                v[l] += v[l + width];
            }
        }

        return v[0];
    }

    /// <summary>y [n, out] = x [n, in] · Wᵀ on integers; <paramref name="absmax"/> is the fp32 absmax per block (double quantization already undone).</summary>
    public static float[] Forward(float[] x, byte[] packed, float[] absmax, ReadOnlySpan<float> table, int blocksize, int n, int inFeatures, int outFeatures)
    {
        if (inFeatures % Chunk != 0)
        {
            throw new ArgumentException($"inFeatures must be a multiple of {Chunk}, got {inFeatures}.", nameof(inFeatures));
        }

        sbyte[] t8 = Int8Table(table);
        int chunks = inFeatures / Chunk;
        var y = new float[(long)n * outFeatures];
        var q = new sbyte[Chunk];
        var sx = new float[chunks];
        var qx = new sbyte[inFeatures];
        Span<float> acc = stackalloc float[16];
        for (int r = 0; r < n; r++)
        {
            for (int c = 0; c < chunks; c++)
            {
                sx[c] = QuantizeChunk(x.AsSpan((r * inFeatures) + (c * Chunk), Chunk), q);
                q.CopyTo(qx, c * Chunk);
            }

            for (int j = 0; j < outFeatures; j++)
            {
                acc.Clear();
                for (int c = 0; c < chunks; c++)
                {
                    long e0 = ((long)j * inFeatures) + (c * Chunk);
                    float s = sx[c] * (absmax[e0 / blocksize] * TableScale);
                    for (int l = 0; l < 8; l++)
                    {
                        int lane = 0;
                        for (int p = 4 * l; p < (4 * l) + 4; p++)
                        {
                            long e = e0 + Element(p);
                            int code = (e & 1) == 0 ? packed[e >> 1] >> 4 : packed[e >> 1] & 0xF;
                            lane += t8[code] * qx[(c * Chunk) + Element(p)];
                        }

                        int a = (8 * (c & 1)) + l;
                        acc[a] = MathF.FusedMultiplyAdd(lane, s, acc[a]);
                    }
                }

                y[((long)r * outFeatures) + j] = Reduce16(acc);
            }
        }

        return y;
    }
}
