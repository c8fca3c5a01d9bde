using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

public static partial class Functional
{
    /// <summary>The label value whose positions are ignored by the loss (PyTorch's ignore_index).</summary>
    public const int IgnoreIndex = -100;

    /// <summary>
    /// Causal grouped-query attention of q [batch·queryLength, heads·headDim] over k, v
    /// [batch·keyLength, kvHeads·headDim]; the queries are the last queryLength positions.
    /// Backward keeps only the per-row log-sum-exp, never the probability matrix.
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, int batch, int heads, int kvHeads, int headDim, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        SameShape(k, v, "k", "v");
        long queryRows = q.Count / ((long)heads * headDim), keyRows = k.Count / ((long)kvHeads * headDim);
        if (batch <= 0 || queryRows % batch != 0 || keyRows % batch != 0)
        {
            throw new ArgumentException($"attention: q [{string.Join(", ", q.Shape)}] and k [{string.Join(", ", k.Shape)}] do not split into batch {batch}.", nameof(batch));
        }

        int tq = (int)(queryRows / batch), tk = (int)(keyRows / batch);
        if (q.Device.IsGpu)
        {
            return AttentionOnDevice(q, k, v, batch, tq, tk, heads, kvHeads, headDim);
        }

        float scale = 1f / MathF.Sqrt(headDim);
        var o = GC.AllocateUninitializedArray<float>(checked((int)q.Count));
        var lse = GC.AllocateUninitializedArray<float>(batch * heads * tq);
        Kernels.Cpu.Attention.Forward(q.Data, k.Data, v.Data, o, lse, batch, tq, tk, heads, kvHeads, headDim, scale, options);
        var output = new Tensor(o, q.Shape);
        if (Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad))
        {
            Tape.Record(output, () =>
            {
                var dq = GC.AllocateUninitializedArray<float>(o.Length);
                var dk = GC.AllocateUninitializedArray<float>(checked((int)k.Count));
                var dv = GC.AllocateUninitializedArray<float>(checked((int)v.Count));
                Kernels.Cpu.Attention.Backward(output.Grad!, q.Data, k.Data, v.Data, o, lse, dq, dk, dv, batch, tq, tk, heads, kvHeads, headDim, scale, options);
                Grad.AddOwned(q, dq);
                Grad.AddOwned(k, dk);
                Grad.AddOwned(v, dv);
            });
        }

        return output;
    }

    /// <summary>
    /// Mean cross-entropy of logits [n, vocab] against labels [n] over the rows whose label is not
    /// <see cref="IgnoreIndex"/> (fused log-softmax + NLL, row by row in vocabulary chunks).
    /// </summary>
    /// <param name="logits">The logits.</param>
    /// <param name="labels">One label per row; <see cref="IgnoreIndex"/> rows do not count.</param>
    /// <param name="consumeLogits">
    /// When true the backward pass overwrites the logits' storage with their gradient (and hands
    /// that buffer on as the gradient), so no second [n, vocab] buffer exists; the logits tensor
    /// must not be read after backward. When false a separate gradient buffer is allocated.
    /// </param>
    /// <param name="options">Kernel options.</param>
    public static Tensor CrossEntropy(Tensor logits, int[] labels, bool consumeLogits = false, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(labels);
        int vocab = logits.Columns, n = logits.Rows;
        if (labels.Length != n)
        {
            throw new ArgumentException($"cross-entropy: {labels.Length} labels for {n} rows of logits [{string.Join(", ", logits.Shape)}].", nameof(labels));
        }

        int count = Kernels.Cpu.CrossEntropy.CountValid(labels);
        if (logits.Device.IsGpu)
        {
            return CrossEntropyOnDevice(logits, labels, count);
        }

        var lse = GC.AllocateUninitializedArray<float>(n);
        double sum = Kernels.Cpu.CrossEntropy.Forward(logits.Data, labels, lse, n, vocab, options);
        var output = new Tensor([count == 0 ? 0f : (float)(sum / count)], 1);
        if (Tape.ShouldRecord(logits) && count > 0)
        {
            Tape.Record(output, () =>
            {
                float scale = output.Grad![0] / count;
                if (consumeLogits && logits.Grad == null)
                {
                    Kernels.Cpu.CrossEntropy.BackwardInPlace(logits.Data, labels, lse, scale, n, vocab, options);
                    logits.Grad = logits.Data;
                }
                else
                {
                    Grad.Accumulate(logits, d =>
                    {
                        logits.Data.CopyTo(d);
                        Kernels.Cpu.CrossEntropy.BackwardInPlace(d, labels, lse, scale, n, vocab, options);
                    });
                }
            });
        }

        return output;
    }
}
