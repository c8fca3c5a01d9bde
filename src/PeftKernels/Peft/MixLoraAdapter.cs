// A MixLoRA adapter attached to a whole Llama model (docs/formats/mixlora.md): every decoder
// layer's MLP gets a MixLoraBlock (router + per-expert LoRA on the targeted gate/up/down; the hook
// is LlamaMlp.MixLora), and the targeted attention projections get one plain LoRA adapter named
// "mixlora" shared by all tokens (Linear's own adapter slot, made active alongside the layer's
// other active adapters, as a Linear runs only active ones). Training adds the router's
// load-balancing loss to the causal-LM loss (LlamaForCausalLM.Loss). The routed experts cannot be
// merged into one MLP (each token mixes different experts), so CanMerge is false.
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>MixLoRA: token routing over per-expert LoRA on the MLP, plain LoRA on attention.</summary>
public sealed partial class MixLoraAdapter : IModelAdapter
{
    /// <summary>The name of the attention LoRA adapters on the q/k/v/o Linear layers.</summary>
    public const string AttentionAdapterName = "mixlora";

    /// <summary>Why a MixLoRA adapter does not merge (the message of <see cref="Merge"/>).</summary>
    public const string NoMergeReason = "MixLoRA does not merge: each token mixes its own top-k experts, so the routed expert LoRAs cannot fold into one "
        + "MLP weight (only the attention LoRA could); serve it unmerged.";

    private static readonly string[] AttentionModules = ["q_proj", "k_proj", "v_proj", "o_proj"];
    private readonly List<(Linear Layer, LoraAdapter Adapter)> attention;
    private bool detached;

    private MixLoraAdapter(LlamaForCausalLM model, MixLoraConfig config, IReadOnlyList<MixLoraBlock> blocks, List<(Linear, LoraAdapter)> attention)
    {
        Model = model;
        Config = config;
        Blocks = blocks;
        this.attention = attention;
    }

    /// <inheritdoc/>
    public string Method => "mixlora";

    /// <inheritdoc/>
    public LlamaForCausalLM Model { get; }

    /// <summary>The config.</summary>
    public MixLoraConfig Config { get; }

    /// <summary>The per-layer mixtures (layer order).</summary>
    public IReadOnlyList<MixLoraBlock> Blocks { get; }

    /// <summary>The attention LoRA adapters (layer, then q, k, v, o order of the targeted ones).</summary>
    public IReadOnlyList<LoraAdapter> AttentionAdapters => [.. attention.Select(a => a.Adapter)];

    /// <inheritdoc/>
    public IEnumerable<Parameter> Parameters =>
        attention.SelectMany(a => a.Adapter.Parameters).Concat(Blocks.SelectMany(b => b.NamedParameters().Select(p => p.Parameter)));

    /// <inheritdoc/>
    public bool CanMerge => false;

    /// <summary>
    /// Attaches a freshly initialised MixLoRA adapter (trainable): routers N(0, router_init_range²), LoRA A kaiming-uniform and
    /// B = 0, so the model starts equal to the base.
    /// </summary>
    /// <exception cref="InvalidOperationException">The model already has a MixLoRA adapter.</exception>
    public static MixLoraAdapter Attach(LlamaForCausalLM model, MixLoraConfig config, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        RequireFree(model);
        var layers = model.Model.Layers;
        var attention = new List<(Linear, LoraAdapter)>();
        for (int l = 0; l < layers.Count; l++)
        {
            foreach (var module in AttentionModules.Where(config.Targets))
            {
                var linear = AttentionLinear(layers[l].SelfAttn, module);
                attention.Add((linear, new LoraAdapter(AttentionAdapterName, linear.InFeatures, linear.OutFeatures, config.R, config.LoraAlpha,
                    (float)config.LoraDropout, config.UseRsLora, ForwardContext.Mix((ulong)(uint)seed, (ulong)((l * 8) + Array.IndexOf(AttentionModules, module) + 1)))));
            }
        }

        var blocks = layers.Select((layer, l) => MixLoraBlock.Create(layer.Mlp, config, l, seed)).ToList();
        return Install(model, config, blocks, attention);
    }

    /// <summary>Refuses to merge, with <see cref="NoMergeReason"/>.</summary>
    /// <exception cref="NotSupportedException">Always.</exception>
    public void Merge() => throw new NotSupportedException(NoMergeReason);

    /// <inheritdoc/>
    public void Detach()
    {
        if (detached)
        {
            return;
        }

        foreach (var (layer, _) in attention)
        {
            layer.RemoveAdapter(AttentionAdapterName);
            layer.SetActiveAdapters([.. layer.ActiveAdapters.Where(n => n != AttentionAdapterName)]);
        }

        foreach (var layer in Model.Model.Layers)
        {
            layer.Mlp.MixLora = null;
        }

        removeAuxiliaryLoss?.Invoke();
        detached = true;
    }

    private static MixLoraAdapter Install(LlamaForCausalLM model, MixLoraConfig config, List<MixLoraBlock> blocks, List<(Linear Layer, LoraAdapter Adapter)> attention)
    {
        // The attention LoRA runs for every token: its name joins the layer's active adapters (a Linear runs only the active ones).
        foreach (var (layer, adapter) in attention)
        {
            layer.AddAdapter(adapter);
            layer.SetActiveAdapters([.. layer.ActiveAdapters, AttentionAdapterName]);
        }

        var layers = model.Model.Layers;
        for (int l = 0; l < layers.Count; l++)
        {
            layers[l].Mlp.MixLora = blocks[l];
        }

        // The new modules follow the model's mode (dropout and the load-balancing loss in training only).
        bool training = model.Training;
        foreach (var b in blocks)
        {
            b.Train(training);
        }

        model.SyncDevice(refresh: false);
        var installed = new MixLoraAdapter(model, config, blocks, attention);
        installed.RegisterLoadBalancingLoss();
        return installed;
    }

    private static void RequireFree(LlamaForCausalLM model)
    {
        if (model.Model.Layers.Any(l => l.Mlp.MixLora != null))
        {
            throw new InvalidOperationException("the model already has a MixLoRA adapter; Detach() it before attaching another.");
        }

        var taken = model.Model.Layers.SelectMany(l => AttentionModules.Select(m => AttentionLinear(l.SelfAttn, m)))
            .Any(linear => linear.AllAdapters.Any(a => a.Name == AttentionAdapterName));
        if (taken)
        {
            throw new InvalidOperationException($"an attention layer already has an adapter named '{AttentionAdapterName}'; remove it before attaching MixLoRA.");
        }
    }

    private static Linear AttentionLinear(LlamaAttention attention, string module) => module switch
    {
        "q_proj" => attention.QProj,
        "k_proj" => attention.KProj,
        "v_proj" => attention.VProj,
        "o_proj" => attention.OProj,
        _ => throw new ArgumentOutOfRangeException(nameof(module), $"'{module}' is not an attention projection."),
    };
}
