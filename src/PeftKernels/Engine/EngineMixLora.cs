// MixLoRA adapters served by the engine (docs/formats/mixlora.md#serving): a folder is loaded with the
// library's own strict loader (MixLoraAdapter.Load) onto a twin of the serving model that shares its base
// parameters, so the serving model's layers never see it. Its two parts reach the batched forward apart:
//   attention  the plain LoRA "mixlora" on q/k/v/o becomes the EngineAdapter's projection modules (Kind
//              MixLora, AdapterKind.Lora modules: y = x·Wᵀ + s·B·A·x), so the segmented LoRA kernels serve
//              it together with every LoRA request in the batch;
//   MLP        for the rows R of the sequences holding this adapter, the layer's MLP output is replaced by
//              the twin's MixLoraBlock on those rows, y[R] = Σ_k w_k·expert_k(n[R]) (n = the post-attention
//              normed rows; BatchForward.MixLora.cs gathers them, runs the block, scatters y back).
// Routing is per token, so a row's result does not depend on the other rows of the step: a sequence's
// result equals the library's model run alone with the adapter (within fp32 rounding). Evaluation only:
// the twin is in evaluation mode (no jitter, no dropout) and the block runs under Tape.NoGrad, so no
// routing is kept for the load-balancing loss. NaN or infinite values are refused (InvalidDataException).
// On a device engine the twin shares the device model's parameters, so the loader mirrors the adapter's
// parameters there (SyncDevice) and the block runs on device tensors (DeviceBatchForward.MixLora.cs).
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Engine;

/// <summary>The MLP mixtures of one MixLoRA engine adapter version (its attention LoRA is in the adapter's modules).</summary>
internal sealed class EngineMixLora
{
    private EngineMixLora(LlamaForCausalLM twin, MixLoraAdapter adapter)
    {
        Twin = twin;
        Adapter = adapter;
    }

    /// <summary>True once any MixLoRA adapter was loaded in this process (the forward's fast path skips the MLP hook otherwise).</summary>
    public static bool AnyLoaded => EngineAdapterState<EngineMixLora>.AnyLoaded;

    /// <summary>Turns the forward's MixLoRA hooks on as if such an adapter had been loaded (tests of the steady state with every hook live).</summary>
    internal static void ArmHooks() => EngineAdapterState<EngineMixLora>.ArmHooks();

    /// <summary>The twin model the adapter is attached to (its base parameters are the serving model's).</summary>
    public LlamaForCausalLM Twin { get; }

    /// <summary>The adapter, on the twin.</summary>
    public MixLoraAdapter Adapter { get; }

    /// <summary>Loads the MixLoRA folder <paramref name="folder"/> as an engine adapter.</summary>
    /// <exception cref="InvalidDataException">A bad folder (the library loader's message) or NaN / infinite values.</exception>
    public static EngineAdapter Load(LlamaForCausalLM model, string name, int version, string folder)
    {
        var twin = model.ShareBaseParameters();
        var mix = MixLoraAdapter.Load(twin, folder);
        twin.Train(false);
        var bad = twin.NamedParameters().Where(p => p.Name.Contains("mixlora", StringComparison.Ordinal) && p.Parameter.Data.Any(v => !float.IsFinite(v)))
            .Select(p => p.Name).ToList();
        if (bad.Count > 0)
        {
            throw new InvalidDataException($"adapter '{name}' ({folder}) holds NaN or infinite values: {string.Join("; ", bad.Take(5))}"
                + (bad.Count > 5 ? $" and {bad.Count - 5} more." : "."));
        }

        var parts = new List<AdapterModule>();
        for (int l = 0; l < twin.Model.Layers.Count; l++)
        {
            for (int p = Projections.Q; p <= Projections.O; p++)
            {
                var linear = Projections.Of(twin.Model.Layers[l], p);
                if (linear.AllAdapters.OfType<LoraAdapter>().FirstOrDefault(a => a.Name == MixLoraAdapter.AttentionAdapterName) is { } lora)
                {
                    parts.Add(new AdapterModule(l, (Projection)p, linear.InFeatures, linear.OutFeatures, AdapterKind.Lora,
                        lora.A.ToFloat32().ToArray(), lora.B.ToFloat32().ToArray(), lora.Scale, lora.Bias?.ToFloat32().ToArray()));
                }
            }
        }

        long blockBytes = 4L * mix.Blocks.Sum(b => b.NamedParameters().Sum(p => (long)p.Parameter.Data.Length));
        var adapter = new EngineAdapter(name, version, folder, AdapterKind.MixLora, twin.Model.Layers.Count, parts, blockBytes);
        EngineAdapterState<EngineMixLora>.Register(adapter, new EngineMixLora(twin, mix));
        return adapter;
    }

    /// <summary>The MLP mixtures of <paramref name="adapter"/>, or null for any other kind.</summary>
    public static EngineMixLora? Of(EngineAdapter? adapter) =>
        EngineAdapterState<EngineMixLora>.Of(adapter, AdapterKind.MixLora);

    /// <summary>Layer <paramref name="layer"/>'s mixture output [rows, hidden] for its MLP input (normed rows) x [rows, hidden].</summary>
    public float[] MlpOutput(int layer, float[] x, int rows, KernelOptions kernel)
    {
        int hidden = x.Length / rows;
        using var scope = Tape.NoGrad();
        return MlpOutput(layer, new Tensor(x, rows, hidden), new ForwardContext(0, kernel)).Data;
    }

    /// <summary>
    /// Layer <paramref name="layer"/>'s mixture output for the normed rows in tensor <paramref name="x"/> [rows, hidden] (the device
    /// engine: a device tensor, so the library's device ops run the block); the caller holds Tape.NoGrad.
    /// </summary>
    public Tensor MlpOutput(int layer, Tensor x, ForwardContext context) =>
        Adapter.Blocks[layer].Forward(Twin.Model.Layers[layer].Mlp, x, context);
}
