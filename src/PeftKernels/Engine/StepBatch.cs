// What one engine step runs: rows (tokens) from several sequences, each sequence's rows contiguous
// (a prompt chunk, or one decode token), with the position of each row and the adapter slot of each
// sequence. The scheduler fills it (after reserving every row's position in the sequence's block
// table), the batched forward reads it. Buffers are sized once, so filling allocates nothing.
// An X-LoRA group also carries its adapter and its rows' scalings (InferenceEngine.XLora.cs), set after Add.
namespace PeftKernels.Engine;

/// <summary>The rows of one step, grouped by sequence.</summary>
internal sealed class StepBatch
{
    public StepBatch(int maxRows, int maxSequences)
    {
        Tokens = new int[maxRows];
        Positions = new int[maxRows];
        Sequences = new PagedSequence[maxSequences];
        SequenceStart = new int[maxSequences + 1];
        Slot = new int[maxSequences];
        LogitRow = new int[maxSequences];
        XLora = new EngineXLora?[maxSequences];
        XLoraScalings = new float[]?[maxSequences];
    }

    /// <summary>Rows in use.</summary>
    public int Rows { get; private set; }

    /// <summary>Sequences in use.</summary>
    public int Count { get; private set; }

    /// <summary>Rows that produce logits (the last row of each sequence that wants them).</summary>
    public int LogitRows { get; private set; }

    /// <summary>Token id per row.</summary>
    public int[] Tokens { get; }

    /// <summary>Position per row (its sequence's position of that token).</summary>
    public int[] Positions { get; }

    /// <summary>The sequence of each group.</summary>
    public PagedSequence[] Sequences { get; }

    /// <summary>First row of each group, then the end of the last ([Count + 1]).</summary>
    public int[] SequenceStart { get; }

    /// <summary>Adapter slot per group (−1: the base model).</summary>
    public int[] Slot { get; }

    /// <summary>Per group: its row in the logits, or −1.</summary>
    public int[] LogitRow { get; }

    /// <summary>Per group: the X-LoRA whose experts its rows run, or null (no X-LoRA, or a scaling pass that is the plain base model).</summary>
    public EngineXLora?[] XLora { get; }

    /// <summary>Per X-LoRA group: its rows' scalings [rows, E or E·L], or null in the scaling pass (every scaling = scaling_pass_value).</summary>
    public float[]?[] XLoraScalings { get; }

    /// <summary>Empties the batch.</summary>
    public void Clear()
    {
        Rows = 0;
        Count = 0;
        LogitRows = 0;
        SequenceStart[0] = 0;
    }

    /// <summary>Adds a group: <paramref name="tokens"/> at positions start.. of <paramref name="sequence"/> (already reserved in its table).</summary>
    /// <returns>The group index.</returns>
    public int Add(PagedSequence sequence, ReadOnlySpan<int> tokens, int start, int slot, bool wantsLogits)
    {
        if (Count == Sequences.Length || Rows + tokens.Length > Tokens.Length || tokens.Length == 0)
        {
            throw new InvalidOperationException($"step batch overflow: {Count} of {Sequences.Length} sequences, {Rows} + {tokens.Length} of {Tokens.Length} rows.");
        }

        for (int i = 0; i < tokens.Length; i++)
        {
            Tokens[Rows + i] = tokens[i];
            Positions[Rows + i] = start + i;
        }

        Sequences[Count] = sequence;
        Slot[Count] = slot;
        LogitRow[Count] = wantsLogits ? LogitRows++ : -1;
        XLora[Count] = null;
        XLoraScalings[Count] = null;
        Rows += tokens.Length;
        SequenceStart[++Count] = Rows;
        return Count - 1;
    }
}
