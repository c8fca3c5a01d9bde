// Softmax cross-entropy on the GPU (CrossEntropy.cs). logits z [n, vocab] row-major, labels [n]
// with −100 = ignored row.
//   lse_i = log Σ_j exp(z_ij)  = m_i + log Σ_j exp(z_ij − m_i),  m_i = max_j z_ij
//           (one group of 256 threads per row: group max, then the group sum of exp, fixed trees)
//   loss  = Σ_{i: label_i ≠ −100} (lse_i − z_{i,label_i})   in double, in row order, on the host
//           (the kernel writes each row's term (double)lse_i − (double)z_{i,label_i}, or +0 on an
//           ignored row; the host adds them in row order exactly as the CPU kernel does)
// Backward of gradScale·loss, in place over the logits:
//   dz_ij = gradScale·(exp(z_ij − lse_i) − [j = label_i]),  and 0 on ignored rows
// Labels live on the device and are not checked here (GpuLaunch's rule): the caller checks them on
// the host before upload (CheckLabels); an out-of-range label would index outside the row.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Fused softmax cross-entropy forward and in-place backward on an ILGPU accelerator.</summary>
public static class CrossEntropyKernels
{
    /// <summary>The label of a row that takes no part in the loss (as torch's ignore_index).</summary>
    public const int IgnoreIndex = CrossEntropyShapes.IgnoreIndex;

    private const int Threads = 256;

    /// <summary>
    /// Writes lse (log-sum-exp of every row, ignored rows too) and returns Σ over rows with label ≠ −100 of
    /// (lse_i − logits[i, label_i]). Waits for the accelerator once (the loss is a host value).
    /// Each label must be in [0, vocab) or −100; the caller checks them on the host (<see cref="CheckLabels"/>).
    /// </summary>
    public static double Forward(Accelerator accelerator, FloatView logits, IntView labels, FloatView lse, int n, int vocab)
    {
        Validate(accelerator, logits, labels, lse.Length, n, vocab);
        if (n == 0)
        {
            return 0;
        }

        using var terms = accelerator.Rent<double>(n);
        Loaded.For(accelerator).Forward(new KernelConfig(n, Threads), logits, labels, lse, terms.View, vocab);
        double loss = 0;
        foreach (double term in GpuLaunch.ForHostValue(terms.View))
        {
            loss += term;
        }

        return loss;
    }

    /// <summary>Overwrites <paramref name="logits"/> with gradScale·(softmax − onehot(label)) per row; rows labelled −100 become zeros. Enqueues only.</summary>
    public static void BackwardInPlace(Accelerator accelerator, FloatView logits, IntView labels, FloatView lse, float gradScale, int n, int vocab)
    {
        Validate(accelerator, logits, labels, lse.Length, n, vocab);
        if (n != 0)
        {
            Loaded.For(accelerator).Backward(n * vocab, logits, labels, lse, gradScale, vocab);
        }
    }

    internal static void ForwardKernel(FloatView logits, IntView labels, FloatView lse, ArrayView1D<double, Stride1D.Dense> terms, int vocab)
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
            float rowLse = max + MathF.Log(sum);
            lse[i] = rowLse;
            int label = labels[i];
            terms[i] = label == IgnoreIndex ? 0.0 : (double)rowLse - logits[row + label];
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

    /// <summary>
    /// The host check of the labels that <see cref="Forward"/> and <see cref="BackwardInPlace"/> do not make (they
    /// never download them): each label is in [0, vocab) or −100. Call it before uploading the labels.
    /// </summary>
    /// <param name="labels">The labels, on the host.</param>
    /// <param name="vocab">Columns of the logits.</param>
    /// <exception cref="ArgumentException">A label is out of range.</exception>
    public static void CheckLabels(ReadOnlySpan<int> labels, int vocab) => CrossEntropyShapes.Labels(labels, vocab);

    private static void Validate(Accelerator accelerator, FloatView logits, IntView labels, long lse, int n, int vocab)
    {
        GpuCheck.NotNull(accelerator);
        CrossEntropyShapes.Validate(logits.Length, labels.Length, lse, n, vocab);
        GpuCheck.FitsInt(logits.Length, nameof(logits));
    }

    private sealed class Loaded
    {
        public readonly Action<KernelConfig, FloatView, IntView, FloatView, ArrayView1D<double, Stride1D.Dense>, int> Forward;
        public readonly Action<Index1D, FloatView, IntView, FloatView, float, int> Backward;

        private Loaded(Accelerator accelerator)
        {
            Forward = accelerator.LoadStreamKernel<FloatView, IntView, FloatView, ArrayView1D<double, Stride1D.Dense>, int>(ForwardKernel);
            Backward = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, float, int>(BackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
