// X-LoRA in the device engine's forward (the device twin of BatchForward.XLora.cs and of the engine's
// scaling pass, InferenceEngine.XLora.cs), all on the device and queued, with no wait of its own:
//   RunHidden      the scaling pass: the decoder over the X-LoRA rows through their scaling-pass caches,
//                  then every row's final hidden state rmsnorm(x)·w_norm into xn [rows, hidden];
//   Scalings       per X-LoRA group, its rows of xn copied into a device tensor and run through its
//                  classifier (the library's device GEMM, ReLU, X-LoRA gate ops): s [rows, E or E·L],
//                  kept as a device tensor for the main run of the same step;
//   AddXLora       in the main run (and, with scaling_pass_value ≠ 0, in the scaling pass with every
//                  sⱼ = that value), after a projection's adapters: y[rows] += Σⱼ g·(αⱼ/rⱼ)·(Bⱼ Aⱼ (x ⊙ sⱼ) + bias_Bⱼ)
//                  through the twin's Linear.XLoraBranches on copies of the group's rows of x and y.
// The step's scalings and the classifier's temporaries belong to a DeviceScope opened by the first
// Scalings call and ended by EndStep (the engine calls it after the main run, also after an error).
// So an X-LoRA step keeps the one wait of the main run's logits download.
using PeftKernels.Nn;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

internal sealed partial class DeviceBatchForward
{
    private Tensor?[]? xloraScalings;
    private DeviceScope? stepScope;
    private bool scalingPass;

    /// <summary>
    /// The scaling pass over <paramref name="batch"/> (the X-LoRA rows with their scaling-pass caches): every row's final normed
    /// hidden state, left on the device in xn for <see cref="Scalings"/>; no logits, no wait.
    /// </summary>
    public void RunHidden(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        scalingPass = true;
        try
        {
            Decoder(batch, table);
        }
        finally
        {
            scalingPass = false;
        }

        RmsNormKernels.Forward(accelerator, Rows(x, hidden, n), finalNorm, eps, Rows(xn, hidden, n), rstd.View.SubView(0, n), n, hidden);
    }

    /// <summary>
    /// Group <paramref name="group"/>'s scalings for the main run of this step: <paramref name="xlora"/>'s classifier on rows
    /// [<paramref name="start"/>, start + <paramref name="rows"/>) of the scaling pass's hidden states.
    /// </summary>
    public void Scalings(int group, EngineXLora xlora, int start, int rows)
    {
        stepScope ??= DeviceScope.Begin();
        xloraScalings ??= new Tensor?[maxSequences];
        using var noGrad = Tape.NoGrad();
        var h = RowTensor(xn.View.SubView((long)start * hidden, (long)rows * hidden), rows, hidden);
        xloraScalings[group] = xlora.Model.Classifier.Forward(h, new ForwardContext());
    }

    /// <summary>Frees the step's scalings and classifier temporaries (after the main run, or after an error).</summary>
    public void EndStep()
    {
        if (xloraScalings != null)
        {
            Array.Clear(xloraScalings);
        }

        stepScope?.Dispose();
        stepScope = null;
    }

    /// <summary>Adds each X-LoRA group's experts to its rows of the projection output <paramref name="y"/> [n, out].</summary>
    private void AddXLora(int layer, int p, FloatView xin, FloatView y, StepBatch batch)
    {
        if (!EngineXLora.AnyLoaded)
        {
            return;
        }

        var (inF, outF) = shapes[p];
        for (int s = 0; s < batch.Count; s++)
        {
            if (batch.XLora[s] is not { } xlora || !xlora.HasExperts(layer, p))
            {
                continue;
            }

            var scalings = scalingPass ? null : xloraScalings?[s]
                ?? throw new InvalidOperationException($"sequence group {s} is X-LoRA but the step has no scalings for it: run the scaling pass first.");
            int rows = batch.SequenceStart[s + 1] - batch.SequenceStart[s];
            var part = RowsOf(y, batch, s, outF);
            using var scope = DeviceScope.Begin();
            using var noGrad = Tape.NoGrad();
            var sum = xlora.Delta(layer, p, RowTensor(RowsOf(xin, batch, s, inF), rows, inF), RowTensor(part, rows, outF), scalings, new ForwardContext());
            part.CopyFrom(sum!.View(device));
        }
    }
}
