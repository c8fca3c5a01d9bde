// Admission of a sequence whose adapter is a prompt-learning one (docs/formats/prompt-learning.md#engine): its first N
// positions are the adapter's virtual positions. Those that prefix sharing did not already give it (published blocks of
// earlier sequences of the same adapter version: no copy) are reserved and their precomputed keys and values copied into
// its blocks for every layer; the real tokens then start at position N and are computed as usual, in a batch with any
// other sequences (LoRA, base, other prompt-learning adapters).
namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    /// <summary>Finishes <paramref name="s"/> with an error when its virtual positions and prompt leave no room to generate within MaxSequenceLength.</summary>
    private bool VirtualOverflow(EngineSequence s)
    {
        if (s.Virtual is not { } prefix || s.Length < MaxSequenceLength)
        {
            return false;
        }

        Finish(s, FinishReason.Error, $"adapter '{s.Request.Adapter}' puts {prefix.Count} virtual positions before the prompt; with its {s.Length - prefix.Count} tokens that is {s.Length} positions, "
            + $"leaving no room to generate within the engine's maximum sequence length {MaxSequenceLength} (virtual positions count towards it).");
        return true;
    }

    /// <summary>Fills the virtual positions of <paramref name="s"/> not yet cached; false when the pool has no room (nothing is kept then).</summary>
    private bool WriteVirtualPositions(EngineSequence s)
    {
        if (s.Virtual is not { } prefix || s.Computed >= prefix.Count)
        {
            return true;
        }

        int start = s.Computed, n = prefix.Count, kvDim = Pool.KvDim;
        for (int p = start; p < n; p++)
        {
            if (!s.Cache!.TryAppend(prefix.TokenId(p)))
            {
                return false;
            }
        }

        for (int l = 0; l < prefix.Keys.Length; l++)
        {
            s.Cache!.WriteRange(l, start, prefix.Keys[l].AsSpan(start * kvDim, (n - start) * kvDim), prefix.Values[l].AsSpan(start * kvDim, (n - start) * kvDim));
        }

        s.Computed = n;
        Stats.VirtualPositionsCopied += n - start;
        return true;
    }
}
