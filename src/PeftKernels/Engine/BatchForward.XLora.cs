// X-LoRA in the engine's batched forward (EngineXLora.cs, InferenceEngine.XLora.cs):
//   AddXLora   after a projection's base product, bias and table adapters, the rows of each X-LoRA group get their
//              experts' contribution y[rows] += Σⱼ g·(αⱼ/rⱼ)·(Bⱼ Aⱼ (x ⊙ sⱼ) + bias_Bⱼ), sⱼ the group's per-row scalings
//              (or scaling_pass_value in a scaling pass); other groups are untouched, so one batch mixes every kind;
//   RunHidden  the scaling pass's output: every row's final hidden state rmsnorm(x)·w_norm [rows, hidden] (what the
//              X-LoRA classifier reads), no logits; it runs the general path at any row count.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Engine;

internal sealed partial class BatchForward
{
    /// <summary>Runs the decoder over the batch and returns every row's final normed hidden state [batch.Rows, hidden] (valid until the next call).</summary>
    public ReadOnlySpan<float> RunHidden(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        Layers(batch, table);
        var output = xn.AsSpan(0, n * hidden);
        RmsNorm.Forward(x.AsSpan(0, n * hidden), finalNorm, eps, output, rstd.AsSpan(0, n), n, hidden, kernel);
        return output;
    }

    private void AddXLora(int layer, int p, ReadOnlySpan<float> xin, Span<float> y, StepBatch batch)
    {
        if (!EngineXLora.AnyLoaded)
        {
            return;
        }

        var (inF, outF) = shapes[p];
        for (int s = 0; s < batch.Count; s++)
        {
            if (batch.XLora[s] is not { } xlora)
            {
                continue;
            }

            int start = batch.SequenceStart[s], rows = batch.SequenceStart[s + 1] - start;
            if (xlora.Delta(layer, p, xin.Slice(start * inF, rows * inF), rows, batch.XLoraScalings[s], kernel) is { } delta)
            {
                var part = y.Slice(start * outF, rows * outF);
                System.Numerics.Tensors.TensorPrimitives.Add(part, delta, part);
            }
        }
    }
}
