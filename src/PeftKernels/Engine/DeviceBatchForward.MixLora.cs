// The MixLoRA hook of the device engine's forward (the device twin of BatchForward.MixLora.cs;
// EngineMixLora.cs). At each decoder layer, right after the post-attention norm n = rmsnorm(x)·w_post,
// the rows R of the sequences whose adapter is a MixLoRA one are copied per adapter into one device
// tensor n_R (each sequence's rows are contiguous; all sequences of one adapter go through one block
// call), and y_R = MixLoraBlock_l(n_R) runs on the device through the library's ops (router GEMM,
// softmax, top-k routing, gathered experts with their LoRA branches, routed sums). After the batch's
// MLP has run on every row, those rows of its output are overwritten with y_R before x += y.
// Waits: the library's top-k routing reads the chosen experts on the host (to group the tokens by
// expert), so each block call waits once: a step with MixLoRA rows waits 1 + layers × (MixLoRA
// adapters with rows in the step) times; a step without them keeps its one wait. MixLoraBlockCalls
// counts the calls (tests check the waits against it). The block's temporaries are device tensors of a
// DeviceScope opened here and closed once the rows are copied back (the stream orders their reuse).
// The attention LoRA of a MixLoRA adapter is ordinary LoRA in the projection table (SGMV).
using PeftKernels.Nn;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

internal sealed partial class DeviceBatchForward
{
    private readonly List<(EngineMixLora Mix, List<int> Sequences, int Rows)> mixGroups = [];
    private readonly List<Tensor> mixOutputs = [];
    private DeviceScope? mixScope;

    /// <summary>MixLoRA block calls since creation (each waits once for its routing: tests count the waits against it).</summary>
    public long MixLoraBlockCalls { get; private set; }

    /// <summary>Computes this layer's MixLoRA MLP outputs of the MixLoRA rows from the normed rows <paramref name="normed"/> [n, hidden].</summary>
    private void MixLoraMlp(int layer, FloatView normed, StepBatch batch, AdapterTable table)
    {
        mixGroups.Clear();
        mixOutputs.Clear();
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

            int g = mixGroups.FindIndex(m => ReferenceEquals(m.Mix, mix));
            if (g < 0)
            {
                mixGroups.Add((mix, [], 0));
                g = mixGroups.Count - 1;
            }

            var group = mixGroups[g];
            group.Sequences.Add(s);
            mixGroups[g] = group with { Rows = group.Rows + (batch.SequenceStart[s + 1] - batch.SequenceStart[s]) };
        }

        if (mixGroups.Count == 0)
        {
            return;
        }

        mixScope = DeviceScope.Begin();
        using var noGrad = Tape.NoGrad();
        foreach (var (mix, sequences, rows) in mixGroups)
        {
            var input = new Tensor(device, accelerator.Rent<float>((long)rows * hidden), [rows, hidden]);
            long offset = 0;
            foreach (int s in sequences)
            {
                var from = RowsOf(normed, batch, s, hidden);
                input.View(device).SubView(offset, from.Length).CopyFrom(from);
                offset += from.Length;
            }

            mixOutputs.Add(mix.MlpOutput(layer, input, new ForwardContext()));
            MixLoraBlockCalls++;
        }
    }

    /// <summary>Overwrites the MixLoRA rows of the MLP output <paramref name="output"/> [n, hidden] with the mixtures; ends their scope.</summary>
    private void ReplaceMixLoraRows(FloatView output, StepBatch batch)
    {
        for (int g = 0; g < mixGroups.Count; g++)
        {
            var y = mixOutputs[g].View(device);
            long offset = 0;
            foreach (int s in mixGroups[g].Sequences)
            {
                var to = RowsOf(output, batch, s, hidden);
                to.CopyFrom(y.SubView(offset, to.Length));
                offset += to.Length;
            }
        }

        EndMixScope();
    }

    /// <summary>Hands the MixLoRA temporaries of this layer back to the pool (also after an error in the layer).</summary>
    private void EndMixScope()
    {
        mixGroups.Clear();
        mixOutputs.Clear();
        mixScope?.Dispose();
        mixScope = null;
    }
}
