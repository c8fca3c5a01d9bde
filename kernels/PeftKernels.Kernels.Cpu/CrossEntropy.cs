// Cross-entropy of logits z [n, vocab] (row-major) against labels [n], label −100 = ignored row; fused
// log-softmax + NLL, never materialising the softmax:
//   lse_i = log Σ_j exp(z_ij), online over chunks of ChunkSize columns: per chunk m = max, s = Σ exp(z − m)
//           in fp32 vector lanes, folded into the running (M, S):  M' = max(M, m),
//           S' = S·exp(M − M') + s·exp(m − M');  lse = M + log S   (every exp argument is ≤ 0: no overflow)
//   loss  = Σ_{i: label_i ≠ −100} (lse_i − z_{i,label_i})   accumulated in double in row order
// Backward of L = gradScale·loss (softmax_ij = exp(z_ij − lse_i)):
//   dL/dz_ij = gradScale·(softmax_ij − [j = label_i]),  and 0 on ignored rows
// The gradient overwrites the logits in place, so the [n, vocab] buffer is not duplicated.
// exp is Vector512/Vector256.Exp (vector paths) or MathF.Exp (scalar path and the chunk folding).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Fused softmax cross-entropy over a vocabulary, forward and in-place backward, on the CPU.</summary>
public static unsafe class CrossEntropy
{
    /// <summary>The label of a row that takes no part in the loss (as torch's ignore_index).</summary>
    public const int IgnoreIndex = CrossEntropyShapes.IgnoreIndex;

    private const int ChunkSize = 4096;
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>Writes lse = logsumexp of every row (ignored rows too) and returns Σ over rows with label ≠ −100 of (lse_i − logits[i, label_i]).</summary>
    /// <param name="logits">Logits [n, vocab].</param>
    /// <param name="labels">Target class of each row [n], in [0, vocab) or −100 (ignored).</param>
    /// <param name="lse">Output [n]: log-sum-exp of each row, needed by <see cref="BackwardInPlace"/>.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="vocab">Classes per row.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <returns>The summed (not averaged) negative log-likelihood; divide by <see cref="CountValid"/> for the mean.</returns>
    public static double Forward(ReadOnlySpan<float> logits, ReadOnlySpan<int> labels, Span<float> lse, int n, int vocab,
        KernelOptions options = default)
    {
        Validate(logits.Length, labels, lse.Length, n, vocab);
        if (n == 0)
        {
            return 0;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = Parts(n, vocab, threads);
        fixed (float* pz = logits, pl = lse)
        {
            float* zs = pz, ls = pl;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(n, parts, part);
                for (int i = i0; i < i1; i++)
                {
                    ls[i] = LogSumExp(zs + ((long)i * vocab), vocab, path);
                }
            });
        }

        double loss = 0;
        for (int i = 0; i < n; i++)
        {
            if (labels[i] != IgnoreIndex)
            {
                loss += (double)lse[i] - logits[(i * vocab) + labels[i]];
            }
        }

        return loss;
    }

    /// <summary>
    /// Overwrites <paramref name="logits"/> with dL/dlogits = gradScale·(softmax − onehot(label)) per row (in place, so the
    /// [n, vocab] gradient needs no second buffer); rows labelled −100 become zeros.
    /// </summary>
    /// <param name="logits">Logits [n, vocab] on entry, their gradient on return.</param>
    /// <param name="labels">Target class of each row [n], in [0, vocab) or −100 (ignored).</param>
    /// <param name="lse">The <see cref="Forward"/> output [n].</param>
    /// <param name="gradScale">dL/dloss for the summed loss, typically 1/<see cref="CountValid"/> for a mean.</param>
    /// <param name="n">Rows (tokens).</param>
    /// <param name="vocab">Classes per row.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void BackwardInPlace(Span<float> logits, ReadOnlySpan<int> labels, ReadOnlySpan<float> lse, float gradScale,
        int n, int vocab, KernelOptions options = default)
    {
        Validate(logits.Length, labels, lse.Length, n, vocab);
        if (n == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = Parts(n, vocab, threads);
        fixed (float* pz = logits, pl = lse)
        fixed (int* plab = labels)
        {
            float* zs = pz, ls = pl;
            int* labs = plab;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(n, parts, part);
                for (int i = i0; i < i1; i++)
                {
                    float* row = zs + ((long)i * vocab);
                    int label = labs[i];
                    if (label == IgnoreIndex)
                    {
                        new Span<float>(row, vocab).Clear();
                        continue;
                    }

                    float target = row[label];
                    SoftmaxRow(row, vocab, ls[i], gradScale, path);
                    row[label] = gradScale * (MathF.Exp(target - ls[i]) - 1f);
                }
            });
        }
    }

    /// <summary>Rows whose label is not −100 (the divisor of the mean loss).</summary>
    public static int CountValid(ReadOnlySpan<int> labels)
    {
        int count = 0;
        foreach (int label in labels)
        {
            count += label != IgnoreIndex ? 1 : 0;
        }

        return count;
    }

    private static int Parts(int n, int vocab, int threads) =>
        (long)n * vocab < ParallelThreshold ? 1 : Math.Min(threads, n);

    private static void Validate(int logits, ReadOnlySpan<int> labels, int lse, int n, int vocab)
    {
        CrossEntropyShapes.Validate(logits, labels.Length, lse, n, vocab);
        CrossEntropyShapes.Labels(labels, vocab);
    }

    private static float LogSumExp(float* row, int vocab, SimdPath path)
    {
        float runMax = float.NegativeInfinity, runSum = 0f;
        for (int c0 = 0; c0 < vocab; c0 += ChunkSize)
        {
            int len = Math.Min(ChunkSize, vocab - c0);
            float max = Max(row + c0, len, path);
            float sum = SumExp(row + c0, len, max, path);
            if (max > runMax)
            {
                runSum = (runSum * MathF.Exp(runMax - max)) + sum;
                runMax = max;
            }
            else
            {
                runSum += sum * MathF.Exp(max - runMax);
            }
        }

        return runMax + MathF.Log(runSum);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Max(float* x, int count, SimdPath path)
    {
        int j = 0;
        float max = float.NegativeInfinity;
        if (path == SimdPath.Vector512 && count >= 16)
        {
            max = Max<Vector512<float>, V512>(x, count, out j);
        }
        else if (path == SimdPath.Vector256 && count >= 8)
        {
            max = Max<Vector256<float>, V256>(x, count, out j);
        }

        for (; j < count; j++)
        {
            max = MathF.Max(max, x[j]);
        }

        return max;
    }

    /// <summary>The IEEE max over the whole vectors (count ≥ Width), folded lane by lane in order, and where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Max<TV, T>(float* x, int count, out int end)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, j;
        TV a = T.Load(x);
        for (j = w; j <= count - w; j += w)
        {
            a = T.MaxIeee(a, T.Load(x + j));
        }

        float max = float.NegativeInfinity;
        for (int l = 0; l < w; l++)
        {
            max = MathF.Max(max, T.Lane(a, l));
        }

        end = j;
        return max;
    }

    /// <summary>Σ exp(x − max).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float SumExp(float* x, int count, float max, SimdPath path)
    {
        int j = 0;
        float sum = 0f;
        if (path == SimdPath.Vector512)
        {
            sum = SumExp<Vector512<float>, V512>(x, count, max, out j);
        }
        else if (path == SimdPath.Vector256)
        {
            sum = SumExp<Vector256<float>, V256>(x, count, max, out j);
        }

        for (; j < count; j++)
        {
            sum += MathF.Exp(x[j] - max);
        }

        return sum;
    }

    /// <summary>Σ exp(x − max) over the whole vectors (two accumulators), and where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float SumExp<TV, T>(float* x, int count, float max, out int end)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, j = 0;
        TV m = T.Splat(max), a0 = default, a1 = default;
        for (; j <= count - (2 * w); j += 2 * w)
        {
            a0 = T.Add(a0, T.ExpBcl(T.Sub(T.Load(x + j), m)));
            a1 = T.Add(a1, T.ExpBcl(T.Sub(T.Load(x + j + w), m)));
        }

        for (; j <= count - w; j += w)
        {
            a0 = T.Add(a0, T.ExpBcl(T.Sub(T.Load(x + j), m)));
        }

        end = j;
        return T.Sum(T.Add(a0, a1));
    }

    /// <summary>x ← scale · exp(x − lse).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SoftmaxRow(float* x, int count, float lse, float scale, SimdPath path)
    {
        int j = path switch
        {
            SimdPath.Vector512 => SoftmaxRow<Vector512<float>, V512>(x, count, lse, scale),
            SimdPath.Vector256 => SoftmaxRow<Vector256<float>, V256>(x, count, lse, scale),
            _ => 0,
        };

        for (; j < count; j++)
        {
            x[j] = scale * MathF.Exp(x[j] - lse);
        }
    }

    /// <summary>x ← scale · exp(x − lse) over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int SoftmaxRow<TV, T>(float* x, int count, float lse, float scale)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, j = 0;
        TV l = T.Splat(lse), s = T.Splat(scale);
        for (; j <= count - w; j += w)
        {
            T.Store(x + j, T.Mul(s, T.ExpBcl(T.Sub(T.Load(x + j), l))));
        }

        return j;
    }
}
