// The virtual positions of a prompt-learning adapter in the engine (docs/formats/prompt-learning.md#engine): per decoder
// layer, the keys and values [N, kvHeads·headDim] of the adapter's N virtual positions, computed once when the adapter
// version is loaded (prompt / P-tuning: the decoder run over the N virtual rows at positions 0..N−1, keys rotated there;
// prefix tuning: the table's key and value columns, no RoPE). A sequence that uses the adapter holds them in its first N
// cache positions and its real tokens start at position N. Each virtual position has a synthetic token id, negative and
// unique to this adapter version (a process-wide tag), so the paged cache's prefix index shares whole blocks of virtual
// positions (and of the same prompt after them) between the sequences of one adapter version, and never across versions.
namespace PeftKernels.Engine;

/// <summary>The precomputed virtual keys and values of one prompt-learning adapter version.</summary>
internal sealed class VirtualPrefix
{
    /// <summary>The most virtual positions an adapter may have here (the position part of the synthetic ids).</summary>
    public const int MaxCount = 1 << 16;

    private static int nextTag;

    public VirtualPrefix(float[][] keys, float[][] values, int count)
    {
        if (count <= 0 || count > MaxCount)
        {
            throw new NotSupportedException($"the engine serves prompt-learning adapters of 1 to {MaxCount} virtual tokens; this one has {count}.");
        }

        Keys = keys;
        Values = values;
        Count = count;

        // 15 bits of tag: unique among the next 32767 prompt-learning versions loaded in this process.
        Tag = (Interlocked.Increment(ref nextTag) & 0x7FFF) | 0;
    }

    /// <summary>N, the virtual positions.</summary>
    public int Count { get; }

    /// <summary>This version's tag in the synthetic ids.</summary>
    public int Tag { get; }

    /// <summary>Keys per layer, [N, kvDim] each.</summary>
    public float[][] Keys { get; }

    /// <summary>Values per layer, [N, kvDim] each.</summary>
    public float[][] Values { get; }

    /// <summary>Bytes held.</summary>
    public long Bytes => (Keys.Sum(k => (long)k.Length) + Values.Sum(v => (long)v.Length)) * sizeof(float);

    /// <summary>The synthetic (negative) token id of virtual position <paramref name="position"/>.</summary>
    public int TokenId(int position) => int.MinValue + (Tag * MaxCount) + position;
}
