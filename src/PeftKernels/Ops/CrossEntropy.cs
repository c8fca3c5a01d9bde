// Mean cross-entropy of logits [n, vocab] against labels [n], rows labelled IgnoreIndex (−100) skipped:
//   lse_i = logsumexp(logits[i, :]);   loss = (1 / count) · Σ_{i: label ≠ −100} (lse_i − logits[i, label_i])
//   dlogits[i, :] = (softmax(logits[i, :]) − onehot(label_i)) · dloss / count   (0 on ignored rows)
// Fused log-softmax + NLL in vocabulary chunks; lse [n] is all that backward keeps. consumeLogits
// lets backward overwrite the logits with their gradient (no second [n, vocab] buffer).
// CPU: Kernels.Cpu.CrossEntropy; GPU: CrossEntropyKernels.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>The label value whose positions are ignored by the loss (PyTorch's ignore_index).</summary>
    public const int IgnoreIndex = -100;

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

    private static Tensor CrossEntropyOnDevice(Tensor logits, int[] labels, int count)
    {
        var device = logits.Device;
        var accelerator = device.Accelerator;
        int n = logits.Rows, vocab = logits.Columns;
        CrossEntropyKernels.CheckLabels(labels, vocab); // the launchers never download them
        var deviceLabels = accelerator.Upload(labels);
        var lse = accelerator.Rent<float>(n);
        double sum = labels.Length == 0 ? 0 : CrossEntropyKernels.Forward(accelerator, logits.View(device), deviceLabels.View, lse.View, n, vocab);
        var output = new Tensor([count == 0 ? 0f : (float)(sum / count)], 1);
        if (!(Tape.ShouldRecord(logits) && count > 0))
        {
            deviceLabels.Dispose();
            lse.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            // The kernel works in place: the gradient starts as a copy of the logits.
            var dlogits = accelerator.Rent<float>(logits.Count);
            dlogits.View.CopyFrom(logits.View(device));
            CrossEntropyKernels.BackwardInPlace(accelerator, dlogits.View, deviceLabels.View, lse.View, output.Grad![0] / count, n, vocab);
            deviceLabels.Dispose();
            lse.Dispose();
            DeviceGrad.Give(logits, dlogits);
        });
        return output;
    }
}
