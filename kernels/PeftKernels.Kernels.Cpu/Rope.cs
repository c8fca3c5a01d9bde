// Rotary position embedding, "rotate half" convention (HF Llama, not interleaved pairs). Shapes,
// row-major: x, y, dy, dx [n, heads, headDim]; positions [n] (token t sits at position positions[t] ≥ 0);
// invFreq [headDim/2]. With h = headDim/2, for every token t, head and j < h:
//   a = (float)pos_t · invFreq_j     fp32 multiply, as torch computes the angle
//   c = (float)cos a, s = (float)sin a   (in double, rounded once)
//   y_j     = x_j·c − x_{j+h}·s
//   y_{j+h} = x_{j+h}·c + x_j·s      i.e. y = R·x with R a rotation in every (j, j+h) plane
// Backward: y is linear in x, so dx = Rᵀ·dy (the same rotation with s negated):
//   dx_j     = dy_j·c + dy_{j+h}·s
//   dx_{j+h} = dy_{j+h}·c − dy_j·s
// cos/sin are computed once per (token, j) and reused by every head. Each output pair is computed
// from the input pair at the same place, read before either is written, so the output may be the
// input itself (in place). No FMA: the vector and scalar paths give bit-identical results.
//
// Inverse frequencies, inv_j = theta^(−2j/headDim), j < h: HF computes the exponent in fp32
// (arange(0, dim, 2).float() / dim); here the exponent is (float)(2j)/(float)headDim and the power
// and reciprocal are in double, rounded once: (float)(1 / theta^e). Llama 3 scaling (transformers'
// _compute_llama3_parameters), with wavelen = 2π/inv, low = orig/lowFreqFactor, high = orig/highFreqFactor
// (wavelengths), computed in double from the fp32 inv_j and rounded once:
//   wavelen > low          → inv / factor
//   wavelen < high         → inv
//   otherwise              → (1 − sm)·inv/factor + sm·inv,  sm = (orig/wavelen − lowFreqFactor)/(highFreqFactor − lowFreqFactor)
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Rotary position embedding (rotate-half convention) forward and backward on the CPU.</summary>
public static unsafe class Rope
{
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>y = RoPE(x): rotates each (j, j + headDim/2) pair of every head by positions[t]·invFreq[j].</summary>
    /// <param name="x">Input [n, heads, headDim].</param>
    /// <param name="positions">Position of each token [n], each ≥ 0.</param>
    /// <param name="invFreq">Inverse frequencies [headDim/2] (see <see cref="InverseFrequencies"/>).</param>
    /// <param name="y">Output [n, heads, headDim]; may be the same memory as <paramref name="x"/> (in place), no other overlap.</param>
    /// <param name="n">Tokens.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Head size, even.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq, Span<float> y,
        int n, int heads, int headDim, KernelOptions options = default) =>
        Rotate(x, positions, invFreq, y, n, heads, headDim, options, transpose: false, "x", "y");

    /// <summary>dx = Rᵀ·dy, the transpose rotation of <see cref="Forward"/>.</summary>
    /// <param name="dy">Gradient of the output [n, heads, headDim].</param>
    /// <param name="positions">Position of each token [n], as in the forward.</param>
    /// <param name="invFreq">Inverse frequencies [headDim/2], as in the forward.</param>
    /// <param name="dx">Output [n, heads, headDim]; may be the same memory as <paramref name="dy"/> (in place), no other overlap.</param>
    /// <param name="n">Tokens.</param>
    /// <param name="heads">Heads per token.</param>
    /// <param name="headDim">Head size, even.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq, Span<float> dx,
        int n, int heads, int headDim, KernelOptions options = default) =>
        Rotate(dy, positions, invFreq, dx, n, heads, headDim, options, transpose: true, "dy", "dx");

    /// <summary>
    /// inv_j = theta^(−2j/headDim) for j &lt; headDim/2, as HF's default RoPE: the exponent is computed in fp32,
    /// (float)(2j)/(float)headDim, then (float)(1.0 / Math.Pow(theta, exponent)) in double.
    /// </summary>
    public static float[] InverseFrequencies(int headDim, double theta)
    {
        RopeShapes.HeadDim(headDim);
        if (!(theta > 0 && double.IsFinite(theta)))
        {
            throw new ArgumentException($"theta must be finite and > 0, got {theta}.", nameof(theta));
        }

        var inv = new float[headDim / 2];
        for (int j = 0; j < inv.Length; j++)
        {
            float exponent = (float)(2 * j) / (float)headDim;
            inv[j] = (float)(1.0 / Math.Pow(theta, exponent));
        }

        return inv;
    }

    /// <summary>
    /// Llama 3 RoPE scaling (transformers' <c>_compute_llama3_parameters</c>) applied to <see cref="InverseFrequencies"/>:
    /// long wavelengths are divided by <paramref name="factor"/>, short ones kept, the band between interpolated smoothly.
    /// </summary>
    public static float[] InverseFrequenciesLlama3(int headDim, double theta, double factor, double lowFreqFactor,
        double highFreqFactor, int originalMaxPositionEmbeddings)
    {
        if (!(factor > 0 && double.IsFinite(factor)))
        {
            throw new ArgumentException($"factor must be finite and > 0, got {factor}.", nameof(factor));
        }

        if (!(lowFreqFactor > 0 && double.IsFinite(lowFreqFactor)))
        {
            throw new ArgumentException($"lowFreqFactor must be finite and > 0, got {lowFreqFactor}.", nameof(lowFreqFactor));
        }

        if (!(highFreqFactor > lowFreqFactor && double.IsFinite(highFreqFactor)))
        {
            throw new ArgumentException(
                $"highFreqFactor must be finite and > lowFreqFactor ({lowFreqFactor}), got {highFreqFactor}.", nameof(highFreqFactor));
        }

        Check.Positive(originalMaxPositionEmbeddings, "originalMaxPositionEmbeddings");
        var inv = InverseFrequencies(headDim, theta);
        double orig = originalMaxPositionEmbeddings;
        double lowFreqWavelen = orig / lowFreqFactor, highFreqWavelen = orig / highFreqFactor;
        for (int j = 0; j < inv.Length; j++)
        {
            double f = inv[j];
            double wavelen = 2 * Math.PI / f;
            if (wavelen > lowFreqWavelen)
            {
                inv[j] = (float)(f / factor);
            }
            else if (!(wavelen < highFreqWavelen))
            {
                double smooth = ((orig / wavelen) - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
                inv[j] = (float)(((1 - smooth) * f / factor) + (smooth * f));
            }
        }

        return inv;
    }

    private static void Rotate(ReadOnlySpan<float> src, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq, Span<float> dst,
        int n, int heads, int headDim, KernelOptions options, bool transpose, string srcName, string dstName)
    {
        RopeShapes.Rotate(srcName, src.Length, positions.Length, invFreq.Length, dstName, dst.Length, n, heads, headDim);
        RopeShapes.Positions(positions);
        long total = (long)n * heads * headDim;

        if (src.Overlaps(dst, out int offset) && offset != 0)
        {
            throw new ArgumentException(
                $"{dstName} overlaps {srcName} shifted by {offset} elements; it must be {srcName} itself (in place) or not overlap it.", dstName);
        }

        if (n == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = total < ParallelThreshold ? 1 : Math.Min(threads, n);
        int half = headDim / 2;
        float sinSign = transpose ? -1f : 1f;
        fixed (float* ps = src, pf = invFreq, pd = dst)
        fixed (int* ppos = positions)
        {
            float* srcs = ps, freqs = pf, dsts = pd;
            int* pos = ppos;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (t0, t1) = CpuParallel.Split(n, parts, part);
                var table = new float[2 * half];
                fixed (float* cos = table)
                {
                    float* sin = cos + half;
                    for (int t = t0; t < t1; t++)
                    {
                        float p = pos[t];
                        for (int j = 0; j < half; j++)
                        {
                            float angle = p * freqs[j];
                            cos[j] = (float)Math.Cos(angle);
                            sin[j] = sinSign * (float)Math.Sin(angle);
                        }

                        long row = (long)t * heads * headDim;
                        for (int hd = 0; hd < heads; hd++)
                        {
                            long at = row + ((long)hd * headDim);
                            RotateHead(srcs + at, cos, sin, dsts + at, half, path);
                        }
                    }
                }
            });
        }
    }

    /// <summary>(y1, y2) = (x1·c − x2·s, x2·c + x1·s) over the two halves of one head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RotateHead(float* x, float* cos, float* sin, float* y, int half, SimdPath path)
    {
        float* x2 = x + half, y2 = y + half;
        int j = 0;
        if (path == SimdPath.Vector512)
        {
            for (; j <= half - 16; j += 16)
            {
                Vector512<float> a = Vector512.Load(x + j), b = Vector512.Load(x2 + j);
                Vector512<float> c = Vector512.Load(cos + j), s = Vector512.Load(sin + j);
                ((a * c) - (b * s)).Store(y + j);
                ((b * c) + (a * s)).Store(y2 + j);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            for (; j <= half - 8; j += 8)
            {
                Vector256<float> a = Vector256.Load(x + j), b = Vector256.Load(x2 + j);
                Vector256<float> c = Vector256.Load(cos + j), s = Vector256.Load(sin + j);
                ((a * c) - (b * s)).Store(y + j);
                ((b * c) + (a * s)).Store(y2 + j);
            }
        }

        for (; j < half; j++)
        {
            float a = x[j], b = x2[j], c = cos[j], s = sin[j];
            y[j] = (a * c) - (b * s);
            y2[j] = (b * c) + (a * s);
        }
    }
}
