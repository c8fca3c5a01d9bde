// Softmax cross-entropy on the GPU (CrossEntropy.cs). logits z [n, vocab] row-major, labels [n]
// with −100 = ignored row.
//   lse_i = log Σ_j exp(z_ij)  = m_i + log Σ_j exp(z_ij − m_i),  m_i = max_j z_ij
//           (one group of 256 threads per row: group max, then the group sum of exp, fixed trees)
//   loss  = Σ_{i: label_i ≠ −100} (lse_i − z_{i,label_i})   in double, in row order, on the host
//           (the kernel gathers z_{i,label_i}; the host adds exactly as the CPU kernel does)
// Backward of gradScale·loss, in place over the logits:
//   dz_ij = gradScale·(exp(z_ij − lse_i) − [j = label_i]),  and 0 on ignored rows
// Labels are checked on the host (one copy of n ints): an out-of-range label would index outside the row.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Fused softmax cross-entropy forward and in-place backward on an ILGPU accelerator.</summary>
public static class CrossEntropyKernels
{
    /// <summary>The label of a row that takes no part in the loss (as torch's ignore_index).</summary>
    public const int IgnoreIndex = -100;

    private const int Threads = 256;

    /// <summary>
    /// Writes lse (log-sum-exp of every row, ignored rows too) and returns Σ over rows with label ≠ −100 of
    /// (lse_i − logits[i, label_i]). Waits for the accelerator (the loss is a host value).
    /// </summary>
    public static double Forward(Accelerator accelerator, FloatView logits, IntView labels, FloatView lse, int n, int vocab)
    {
        var hostLabels = Validate(accelerator, logits, labels, lse.Length, n, vocab);
        if (n == 0)
        {
            return 0;
        }

        using var target = accelerator.Allocate1D<float>(n);
        Loaded.For(accelerator).Forward(new KernelConfig(n, Threads), logits, labels, lse, target.View, vocab);
        accelerator.Synchronize();
        float[] lseHost = lse.GetAsArray1D(), targetHost = target.View.GetAsArray1D();
        double loss = 0;
        for (int i = 0; i < n; i++)
        {
            if (hostLabels[i] != IgnoreIndex)
            {
                loss += (double)lseHost[i] - targetHost[i];
            }
        }

        return loss;
    }

    /// <summary>Overwrites <paramref name="logits"/> with gradScale·(softmax − onehot(label)) per row; rows labelled −100 become zeros.</summary>
    public static void BackwardInPlace(Accelerator accelerator, FloatView logits, IntView labels, FloatView lse, float gradScale, int n, int vocab)
    {
        Validate(accelerator, logits, labels, lse.Length, n, vocab);
        if (n != 0)
        {
            Loaded.For(accelerator).Backward(n * vocab, logits, labels, lse, gradScale, vocab);
        }
    }

    internal static void ForwardKernel(FloatView logits, IntView labels, FloatView lse, FloatView target, int vocab)
    {
        var scratch = SharedMemory.Allocate<float>(GpuMath.WarpSize);
        int i = Grid.IdxX, row = i * vocab;
        float max = float.NegativeInfinity;
        for (int j = Group.IdxX; j < vocab; j += Group.DimX)
        {
            max = MathF.Max(max, logits[row + j]);
        }

        max = GpuMath.GroupMax(max, scratch);
        float sum = 0f;
        for (int j = Group.IdxX; j < vocab; j += Group.DimX)
        {
            sum += MathF.Exp(logits[row + j] - max);
        }

        sum = GpuMath.GroupSum(sum, scratch);
        if (Group.IdxX == 0)
        {
            lse[i] = max + MathF.Log(sum);
            int label = labels[i];
            target[i] = label == IgnoreIndex ? 0f : logits[row + label];
        }
    }

    internal static void BackwardKernel(Index1D index, FloatView logits, IntView labels, FloatView lse, float gradScale, int vocab)
    {
        int i = index / vocab, j = index - (i * vocab), label = labels[i];
        if (label == IgnoreIndex)
        {
            logits[index] = 0f;
            return;
        }

        float p = MathF.Exp(logits[index] - lse[i]);
        logits[index] = j == label ? gradScale * (p - 1f) : gradScale * p;
    }

    private static int[] Validate(Accelerator accelerator, FloatView logits, IntView labels, long lse, int n, int vocab)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, "n");
        Check.Positive(vocab, "vocab");
        Check.Length(nameof(logits), logits.Length, (long)n * vocab, "n·vocab");
        Check.Length(nameof(labels), labels.Length, n, "n");
        Check.Length(nameof(lse), lse, n, "n");
        GpuCheck.FitsInt(logits.Length, nameof(logits));
        if (n == 0)
        {
            return [];
        }

        accelerator.Synchronize();
        int[] host = labels.GetAsArray1D();
        for (int i = 0; i < host.Length; i++)
        {
            int label = host[i];
            if (label != IgnoreIndex && (uint)label >= (uint)vocab)
            {
                throw new ArgumentException(
                    $"labels[{i}] is {label}; a label must be in [0, {vocab}) (vocab) or {IgnoreIndex} (ignored).", nameof(labels));
            }
        }

        return host;
    }

    private sealed class Loaded
    {
        public readonly Action<KernelConfig, FloatView, IntView, FloatView, FloatView, int> Forward;
        public readonly Action<Index1D, FloatView, IntView, FloatView, float, int> Backward;

        private Loaded(Accelerator accelerator)
        {
            Forward = accelerator.LoadStreamKernel<FloatView, IntView, FloatView, FloatView, int>(ForwardKernel);
            Backward = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, float, int>(BackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
