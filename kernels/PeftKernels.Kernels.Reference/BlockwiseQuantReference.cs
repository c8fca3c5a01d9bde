// Blockwise quantization as bitsandbytes defines it (docs/formats/4bit-formats.md#blockwise-quantization), against any
// code table (the 16-entry NF4/FP4 tables, or the 256-entry dynamic map of double
// quantization). The specification the fast kernels must match byte for byte:
//   absmax[b] = max |x| over block b (fp32); scale by max(absmax, 1e-38f)
//   full block:    s = clamp(x · (1f / absmax), −1, 1)      (reciprocal in fp32)
//   partial block: s = clamp(x / absmax, −1, 1)             (true division)
//   stored absmax: full block unclamped, partial last block clamped
//   code = sortedToCode[#{i : mid[i] < s}], mid[i] = (sorted[i] + sorted[i+1]) / 2 in fp32,
//          sorted = the table stably sorted (ties → lower code)
//   4-bit packing: byte[i] = code[2i] << 4 | code[2i+1]; odd length padded with code(0).
//   dequantize:    x' = table[code] · absmax[block]           (one fp32 product)
namespace PeftKernels.Kernels.Reference;

/// <summary>Scalar blockwise quantize/dequantize against a code table: the bit-exact specification.</summary>
public static class BlockwiseQuantReference
{
    /// <summary>The smallest scale bitsandbytes divides by (1e-38 rounded to fp32, a subnormal).</summary>
    public const float MinScale = 1e-38f;

    /// <summary>The code whose value an input maps to (search-sorted left over fp32 midpoints).</summary>
    public static byte Bucketize(float scaled, float[] table)
    {
        int[] order = Enumerable.Range(0, table.Length).OrderBy(i => table[i]).ToArray(); // LINQ OrderBy is stable
        int index = 0;
        for (int i = 0; i < order.Length - 1; i++)
        {
            float mid = (table[order[i]] + table[order[i + 1]]) / 2f;
            if (mid < scaled)
            {
                index++;
            }
        }

        return (byte)order[index];
    }

    /// <summary>One code per element (unpacked) and the stored absmax per block.</summary>
    public static (byte[] Codes, float[] Absmax) Quantize(ReadOnlySpan<float> x, float[] table, int blocksize)
    {
        int blocks = (x.Length + blocksize - 1) / blocksize;
        var codes = new byte[x.Length];
        var absmax = new float[blocks];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * blocksize, end = Math.Min(x.Length, start + blocksize);
            float max = 0f;
            for (int i = start; i < end; i++)
            {
                max = Math.Max(max, Math.Abs(x[i]));
            }

            float clamped = Math.Max(max, MinScale);
            bool partial = end - start < blocksize;
            absmax[b] = partial ? clamped : max;
            float reciprocal = 1f / clamped;
            for (int i = start; i < end; i++)
            {
                float s = partial ? x[i] / clamped : x[i] * reciprocal;
                codes[i] = Bucketize(Math.Clamp(s, -1f, 1f), table);
            }
        }

        return (codes, absmax);
    }

    /// <summary>Two 4-bit codes per byte, first element in the high nibble; odd length padded with code(0).</summary>
    public static byte[] Pack4(byte[] codes, float[] table)
    {
        byte pad = Bucketize(0f, table);
        var packed = new byte[(codes.Length + 1) / 2];
        for (int i = 0; i < packed.Length; i++)
        {
            byte hi = codes[2 * i];
            byte lo = (2 * i) + 1 < codes.Length ? codes[(2 * i) + 1] : pad;
            packed[i] = (byte)((hi << 4) | lo);
        }

        return packed;
    }

    /// <summary>The code of element <paramref name="index"/> in a 4-bit packed buffer.</summary>
    public static byte Code4(ReadOnlySpan<byte> packed, long index) =>
        (byte)((index & 1) == 0 ? packed[(int)(index >> 1)] >> 4 : packed[(int)(index >> 1)] & 0xF);

    /// <summary>x' = table[code] · absmax[block] in fp32, for 4-bit packed codes.</summary>
    public static float[] Dequantize4(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, float[] table, int blocksize, int count)
    {
        var result = new float[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = table[Code4(packed, i)] * absmax[i / blocksize];
        }

        return result;
    }

    /// <summary>Double quantization of the absmax: offset = mean, 8-bit blockwise (256) with the dynamic map.</summary>
    public static (byte[] Codes, float[] NestedAbsmax, float Offset) QuantizeNested(ReadOnlySpan<float> absmax, float[] dynamicMap)
    {
        double sum = 0;
        foreach (float a in absmax)
        {
            sum += a;
        }

        float offset = (float)(sum / absmax.Length);
        var centered = new float[absmax.Length];
        for (int i = 0; i < absmax.Length; i++)
        {
            centered[i] = absmax[i] - offset;
        }

        var (codes, nested) = Quantize(centered, dynamicMap, 256);
        return (codes, nested, offset);
    }

    /// <summary>absmax[i] = dyn[code[i]] · nested[i / 256] + offset, a product then a sum, each rounded to fp32.</summary>
    public static float[] DequantizeNested(ReadOnlySpan<byte> codes, ReadOnlySpan<float> nestedAbsmax, float offset, float[] dynamicMap)
    {
        var result = new float[codes.Length];
        for (int i = 0; i < codes.Length; i++)
        {
            float product = dynamicMap[codes[i]] * nestedAbsmax[i / 256];
            result[i] = product + offset;
        }

        return result;
    }
}
