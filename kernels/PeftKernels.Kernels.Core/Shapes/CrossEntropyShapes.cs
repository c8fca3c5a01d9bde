// Shape checks of softmax cross-entropy, called by the CPU kernel (CrossEntropy) and the GPU launcher
// (CrossEntropyKernels). Shapes: logits [n, vocab], labels [n], lse [n]. Each label is in [0, vocab) or
// IgnoreIndex (−100, a row without loss); Labels checks that on host data: the CPU kernel calls it, and
// a GPU caller calls it before uploading the labels (the launcher never downloads them).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of cross-entropy, shared by the CPU kernel and the GPU launcher.</summary>
internal static class CrossEntropyShapes
{
    /// <summary>The label of a row that takes no part in the loss (torch's ignore_index).</summary>
    public const int IgnoreIndex = -100;

    public static void Validate(long logits, long labels, long lse, int n, int vocab)
    {
        Check.NonNegative(n, "n");
        Check.Positive(vocab, "vocab");
        Check.Length("logits", logits, (long)n * vocab, "n·vocab");
        Check.Length("labels", labels, n, "n");
        Check.Length("lse", lse, n, "n");
    }

    /// <summary>Every label is in [0, vocab) or <see cref="IgnoreIndex"/> (host data).</summary>
    public static void Labels(ReadOnlySpan<int> labels, int vocab)
    {
        for (int i = 0; i < labels.Length; i++)
        {
            int label = labels[i];
            if (label != IgnoreIndex && (uint)label >= (uint)vocab)
            {
                throw new ArgumentException(
                    $"labels[{i}] is {label}; a label must be in [0, {vocab}) (vocab) or {IgnoreIndex} (ignored).", nameof(labels));
            }
        }
    }
}
