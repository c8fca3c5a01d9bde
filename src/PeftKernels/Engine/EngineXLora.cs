// X-LoRA adapters served by the engine (docs/formats/xlora.md#serving). The folder is loaded with the library's own
// strict loader (XLoraModel.Load: config, expert folders, classifier tensors) onto a twin of the serving model that
// shares its base parameters, so the serving model's layers never see it. The EngineAdapter has no projection modules
// (Kind XLora); what the batched forward needs lives here:
//   Scalings   s = gate(classifier(h)) [rows, E or E·L] for the scaling pass's final hidden states h [rows, H] (after
//              the final RMSNorm, as XLoraModel.Forward reads Model.Hidden), eval mode, no gradient;
//   Delta      Σⱼ g·(αⱼ/rⱼ)·(Bⱼ Aⱼ (x ⊙ sⱼ) + bias_Bⱼ) [rows, out] at one projection of one layer for a sequence's rows x
//              [rows, in] (sⱼ its column of s; s null: the scaling pass, every sⱼ = scaling_pass_value), computed by the
//              twin's own Linear.XLoraBranches, the code the library's forward runs (y = 0 in, the contribution out).
// So a sequence's result equals the library's two-pass X-LoRA forward up to fp32 rounding of the sums' order.
// Refused: experts on lm_head (the engine adapts the decoder layers' projections only), NaN or infinite values.
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft.XLora;

namespace PeftKernels.Engine;

/// <summary>The classifier and expert branches of one engine X-LoRA adapter version.</summary>
internal sealed class EngineXLora
{
    private readonly Linear?[] linears;

    private EngineXLora(XLoraModel xlora, Linear?[] linears)
    {
        Model = xlora;
        this.linears = linears;
    }

    /// <summary>True once any X-LoRA adapter was loaded in this process (the forward's fast path skips the branches otherwise).</summary>
    public static bool AnyLoaded => EngineAdapterState<EngineXLora>.AnyLoaded;

    /// <summary>Turns the forward's X-LoRA hooks on as if such an adapter had been loaded (tests of the steady state with every hook live).</summary>
    internal static void ArmHooks() => EngineAdapterState<EngineXLora>.ArmHooks();

    /// <summary>The X-LoRA model on the twin.</summary>
    public XLoraModel Model { get; }

    /// <summary>True when the scaling pass runs the experts (scaling_pass_value ≠ 0); false: it is the plain base model.</summary>
    public bool ScalingPassAdapts => Model.Config.ScalingPassValue != 0;

    /// <summary>The classifier's output width: E, or E·L with layerwise scalings.</summary>
    public int Outputs => Model.Classifier.Outputs;

    /// <summary>Loads <paramref name="folder"/> (an X-LoRA folder) as an engine adapter.</summary>
    /// <exception cref="NotSupportedException">An expert targets lm_head.</exception>
    /// <exception cref="InvalidDataException">The folder is bad, or holds NaN or infinite values.</exception>
    public static EngineAdapter Load(LlamaForCausalLM model, string name, int version, string folder)
    {
        var twin = model.ShareBaseParameters();
        var xlora = XLoraModel.Load(twin, folder);
        if (twin.LmHead.XLora != null)
        {
            throw new NotSupportedException($"adapter '{name}' ({folder}): an X-LoRA expert targets lm_head; the engine serves experts on the decoder layers' "
                + "q/k/v/o/gate/up/down projections only.");
        }

        var bad = xlora.Classifier.NamedParameters().Where(p => p.Parameter.Data.Any(v => !float.IsFinite(v))).Select(p => p.Name)
            .Concat(xlora.Config.ExpertNames.SelectMany(e => xlora.Experts.NonFiniteTensors(e).Select(t => $"expert \"{e}\": {t}"))).Take(1).ToList();
        if (bad.Count > 0)
        {
            throw new InvalidDataException($"adapter '{name}' ({folder}) holds NaN or infinite values ({bad[0]}).");
        }

        int layers = twin.Model.Layers.Count;
        var linears = new Linear?[layers * Projections.Count];
        for (int l = 0; l < layers; l++)
        {
            for (int p = 0; p < Projections.Count; p++)
            {
                var linear = Projections.Of(twin.Model.Layers[l], p);
                linears[(l * Projections.Count) + p] = linear.XLora != null ? linear : null;
            }
        }

        var adapter = new EngineAdapter(name, version, folder, AdapterKind.XLora, layers, [], EngineAdapter.TwinBytes(model, twin));
        EngineAdapterState<EngineXLora>.Register(adapter, new EngineXLora(xlora, linears));
        return adapter;
    }

    /// <summary>The X-LoRA of <paramref name="adapter"/>, or null for any other kind.</summary>
    public static EngineXLora? Of(EngineAdapter? adapter) =>
        EngineAdapterState<EngineXLora>.Of(adapter, AdapterKind.XLora);

    /// <summary>The scalings [rows, Outputs] for the scaling pass's final (normed) hidden states <paramref name="hidden"/> [rows, H].</summary>
    public float[] Scalings(ReadOnlySpan<float> hidden, int rows, KernelOptions kernel)
    {
        using var scope = Tape.NoGrad();
        var h = new Tensor(hidden[..(rows * Model.Config.HiddenSize)].ToArray(), rows, Model.Config.HiddenSize);
        return Model.Classifier.Forward(h, new ForwardContext(0, kernel)).Data.AsSpan(0, rows * Outputs).ToArray();
    }

    /// <summary>True when an expert sits at projection <paramref name="p"/> of layer <paramref name="layer"/>.</summary>
    public bool HasExperts(int layer, int p) => linears[(layer * Projections.Count) + p] != null;

    /// <summary>
    /// y + the experts' contribution at projection <paramref name="p"/> of layer <paramref name="layer"/> for input rows in tensor
    /// <paramref name="x"/> [rows, in] and outputs <paramref name="y"/> [rows, out] (consumed), with <paramref name="scalings"/>
    /// [rows, Outputs] (null: the scaling pass); the device engine passes device tensors. Null when no expert sits there. The caller
    /// holds Tape.NoGrad.
    /// </summary>
    public Tensor? Delta(int layer, int p, Tensor x, Tensor y, Tensor? scalings, ForwardContext context) =>
        linears[(layer * Projections.Count) + p] is { XLora: { } hook } linear ? linear.XLoraBranches(y, x, hook, scalings, context) : null;

    /// <summary>
    /// The experts' contribution [rows, out] at projection <paramref name="p"/> of layer <paramref name="layer"/> for input rows
    /// <paramref name="x"/> [rows, in] with <paramref name="scalings"/> [rows, Outputs] (null: the scaling pass); null when no expert sits there.
    /// </summary>
    public float[]? Delta(int layer, int p, ReadOnlySpan<float> x, int rows, float[]? scalings, KernelOptions kernel)
    {
        if (linears[(layer * Projections.Count) + p] is not { } linear)
        {
            return null;
        }

        using var scope = Tape.NoGrad();
        int inF = linear.InFeatures, outF = linear.OutFeatures;
        var xt = new Tensor(x[..(rows * inF)].ToArray(), rows, inF);
        var s = scalings == null ? null : new Tensor(scalings, rows, Outputs);
        return Delta(layer, p, xt, new Tensor(new float[rows * outF], rows, outF), s, new ForwardContext(0, kernel))?.Data;
    }
}
