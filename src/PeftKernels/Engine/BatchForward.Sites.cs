// The residual sites in the engine's batched forward (EngineBottleneck.cs): before x += a, the rows of
// each sequence whose adapter is a bottleneck one get that setup's contribution Δ(x_rows, a_rows) added
// to a. Sequences with LoRA, DoRA, IA³ or no adapter are untouched, so one batch mixes both kinds.
using System.Numerics.Tensors;

namespace PeftKernels.Engine;

internal sealed partial class BatchForward
{
    private void AddSites(int layer, bool attention, Span<float> residual, Span<float> output, StepBatch batch, AdapterTable table)
    {
        if (!EngineBottleneck.AnyLoaded)
        {
            return;
        }

        for (int s = 0; s < batch.Count; s++)
        {
            if (EngineBottleneck.Of(table.AdapterAt(batch.Slot[s])) is not { } bottleneck)
            {
                continue;
            }

            int start = batch.SequenceStart[s], rows = batch.SequenceStart[s + 1] - start;
            var a = output.Slice(start * hidden, rows * hidden);
            var delta = bottleneck.Delta(layer, attention, residual.Slice(start * hidden, rows * hidden).ToArray(), a.ToArray(), rows, kernel);
            if (delta != null)
            {
                TensorPrimitives.Add(a, delta, a);
            }
        }
    }
}
