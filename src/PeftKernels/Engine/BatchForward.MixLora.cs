// The MixLoRA hook of the engine's batched forward (EngineMixLora.cs): at each decoder layer, right after
// the post-attention norm n = rmsnorm(x)·w_post, the rows R of the sequences whose adapter is a MixLoRA
// one are gathered per adapter (each sequence's rows are contiguous; all sequences of one adapter go
// through one block call), and y_R = MixLoraBlock_l(n_R) is computed; after the batch's MLP has run
// (the base MLP on every row), those rows of its output are overwritten with y_R before x += y. Rows of
// LoRA, DoRA, IA³, bottleneck or base sequences are untouched, so one batch mixes them all. With no
// MixLoRA row in the step nothing is allocated (the decode path's no-allocation steady state holds).
namespace PeftKernels.Engine;

internal sealed partial class BatchForward
{
    private readonly List<MixGroup> mixGroups = [];

    /// <summary>Computes the MixLoRA MLP outputs of this layer's MixLoRA rows from the normed rows <paramref name="normed"/> [rows, hidden].</summary>
    private void MixLoraMlp(int layer, ReadOnlySpan<float> normed, StepBatch batch, AdapterTable table)
    {
        mixGroups.Clear();
        if (!EngineMixLora.AnyLoaded)
        {
            return;
        }

        for (int s = 0; s < batch.Count; s++)
        {
            if (EngineMixLora.Of(table.AdapterAt(batch.Slot[s])) is not { } mix)
            {
                continue;
            }

            // A plain loop, not List.Find with a lambda: the lambda's closure over mix would be allocated for every sequence.
            MixGroup? group = null;
            foreach (var g in mixGroups)
            {
                if (ReferenceEquals(g.Mix, mix))
                {
                    group = g;
                    break;
                }
            }

            if (group == null)
            {
                group = new MixGroup(mix);
                mixGroups.Add(group);
            }

            group.Sequences.Add(s);
            group.Rows += batch.SequenceStart[s + 1] - batch.SequenceStart[s];
        }

        foreach (var group in mixGroups)
        {
            var rows = new float[group.Rows * hidden];
            int offset = 0;
            foreach (int s in group.Sequences)
            {
                int start = batch.SequenceStart[s], count = (batch.SequenceStart[s + 1] - start) * hidden;
                normed.Slice(start * hidden, count).CopyTo(rows.AsSpan(offset, count));
                offset += count;
            }

            group.Output = group.Mix.MlpOutput(layer, rows, group.Rows, kernel);
        }
    }

    /// <summary>Overwrites the MixLoRA rows of the MLP output <paramref name="output"/> [rows, hidden] with the mixtures computed by <see cref="MixLoraMlp"/>.</summary>
    private void ReplaceMixLoraRows(Span<float> output, StepBatch batch)
    {
        foreach (var group in mixGroups)
        {
            int offset = 0;
            foreach (int s in group.Sequences)
            {
                int start = batch.SequenceStart[s], count = (batch.SequenceStart[s + 1] - start) * hidden;
                group.Output.AsSpan(offset, count).CopyTo(output.Slice(start * hidden, count));
                offset += count;
            }
        }

        mixGroups.Clear();
    }

    /// <summary>The sequences of one MixLoRA adapter in a step, their row count, and the block's output over their rows.</summary>
    private sealed class MixGroup(EngineMixLora mix)
    {
        public EngineMixLora Mix { get; } = mix;

        public List<int> Sequences { get; } = [];

        public int Rows { get; set; }

        public float[] Output { get; set; } = [];
    }
}
