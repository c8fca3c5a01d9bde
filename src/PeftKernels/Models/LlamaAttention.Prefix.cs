// Prefix tuning's hook in the attention (docs/formats/prompt-learning.md#prefix-tuning): without a cache, layer l's N
// learned keys and values (columns (2l)·kvDim and (2l+1)·kvDim of the adapter's [N, 2·L·kvDim] table, no RoPE) go
// before each sequence's keys and values; the queries stay the T real tokens, which are the last positions, so the
// causal attention lets each of them see the whole prefix. With a cache the prefix already sits in the cache's first
// N positions (written once when the cache is empty), so nothing is added here.
using PeftKernels.Nn;
using PeftKernels.Ops;
using PeftKernels.Peft;

namespace PeftKernels.Models;

public sealed partial class LlamaAttention
{
    /// <summary>The attached prefix-tuning adapter, or null.</summary>
    internal PromptLearningAdapter? Prefix { get; set; }

    /// <summary>Prepends the layer's prefix keys and values to <paramref name="k"/> and <paramref name="v"/> when a prefix is attached and no cache is used.</summary>
    private void AddPrefix(ref Tensor k, ref Tensor v, int batch, KvCache? cache, int layer, ForwardContext context)
    {
        if (Prefix == null || cache != null)
        {
            return;
        }

        var rows = Prefix.CurrentRows(context);
        int kvDim = Config.NumKeyValueHeads * Config.HeadDim;
        k = Functional.PrependRows(rows, k, batch, 2 * layer * kvDim);
        v = Functional.PrependRows(rows, v, batch, ((2 * layer) + 1) * kvDim);
    }
}
