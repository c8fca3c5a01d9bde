// X-LoRA attached to a LlamaForCausalLM (docs/formats/xlora.md): E frozen LoRA experts loaded through PeftModel.LoadAdapter
// under the names "0" … "E−1", a hook on every Linear that carries an expert (Linear.XLora.cs), and the trainable classifier.
// Forward runs the two passes: the scaling pass (every expert branch scaled by scaling_pass_value, 0 = the base model,
// no gradient) gives the last hidden state; the classifier turns it into per-token scalings; the adapted pass mixes the
// experts with them. With a KV cache, the scaling pass keeps its own cache, paired automatically with the one given (the
// adapted pass's), so incremental decoding equals the full two-pass forward. Per-token mixing cannot merge into static
// weights: CanMerge is false and Merge refuses.
using System.Runtime.CompilerServices;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft.XLora;

/// <summary>X-LoRA (PEFT's XLORA): a classifier mixing frozen LoRA experts per token.</summary>
public sealed partial class XLoraModel : IModelAdapter
{
    private readonly ConditionalWeakTable<KvCache, KvCache> baseCaches = [];
    private readonly List<Linear> hooked = [];
    private bool detached;

    private XLoraModel(LlamaForCausalLM model, XLoraConfig config, PeftModel experts, IReadOnlyList<string> moduleNames, XLoraClassifier classifier,
        XLoraScalingState state)
    {
        Model = model;
        Config = config;
        Experts = experts;
        LoraModules = moduleNames;
        Classifier = classifier;
        State = state;
    }

    /// <inheritdoc/>
    public string Method => "xlora";

    /// <inheritdoc/>
    public LlamaForCausalLM Model { get; }

    /// <summary>The config.</summary>
    public XLoraConfig Config { get; }

    /// <summary>
    /// The experts "0" … "E−1" as ordinary LoRA adapters of a PeftModel over <see cref="Model"/> (frozen); internal, so that nobody
    /// merges, deletes or switches them under the X-LoRA hooks.
    /// </summary>
    internal PeftModel Experts { get; }

    /// <summary>The LoRA modules (the Linear layers carrying at least one expert), in model order: module l is LoraModules[l].</summary>
    public IReadOnlyList<string> LoraModules { get; }

    /// <summary>The classifier (a child of the model named internal_xlora_classifier).</summary>
    public XLoraClassifier Classifier { get; }

    /// <summary>The scalings of the latest forward [n, E] (or [n, E·L] when layerwise), or null before the first.</summary>
    public Tensor? LatestScalings { get; private set; }

    /// <inheritdoc/>
    public IEnumerable<Parameter> Parameters => Classifier.Parameters;

    /// <inheritdoc/>
    public bool CanMerge => false;

    private XLoraScalingState State { get; }

    /// <summary>
    /// Attaches X-LoRA to a bare <paramref name="model"/>: loads the LoRA folders <paramref name="expertFolders"/> as frozen experts
    /// "0", "1", … and creates a fresh trainable classifier (seeded). <paramref name="config"/>'s expert count and hidden size are
    /// set from the folders and the model.
    /// </summary>
    /// <exception cref="InvalidOperationException">The model already carries adapters or an X-LoRA.</exception>
    /// <exception cref="InvalidDataException">An expert folder is bad or is not a plain LoRA adapter (DoRA, IA³, modules_to_save, embeddings).</exception>
    public static XLoraModel Attach(LlamaForCausalLM model, XLoraConfig config, IReadOnlyList<string> expertFolders, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(expertFolders);
        config = config with { Experts = expertFolders.Count, HiddenSize = model.Config.HiddenSize };
        config.Validate();
        return Build(model, config, expertFolders, seed, trainable: true);
    }

    /// <summary>Runs the two passes: logits [B·T, vocab]; with a cache, the scaling pass uses its paired base cache.</summary>
    internal Tensor Forward(int[] tokens, int batch, KvCache? cache, ForwardContext? context)
    {
        ObjectDisposedException.ThrowIf(detached, this);
        context ??= ForwardContext.Default;
        var baseCache = cache == null ? null : BaseCache(cache);
        Tensor hidden;
        State.Scalings = null;
        using (Autograd.Tape.NoGrad())
        {
            hidden = Model.Hidden(tokens, batch, baseCache, context);
        }

        var scalings = Classifier.Forward(hidden, context);
        LatestScalings = scalings;
        State.Scalings = scalings;
        try
        {
            return Model.LmHead.Forward(Model.Hidden(tokens, batch, cache, context), context);
        }
        finally
        {
            State.Scalings = null;
        }
    }

    /// <summary>Refuses: per-token expert mixing has no static weight equivalent.</summary>
    /// <exception cref="NotSupportedException">Always.</exception>
    public void Merge() => throw new NotSupportedException(
        "X-LoRA cannot be merged: its expert scalings change per token, so no static weight equals the mixture (docs/formats/xlora.md#merge).");

    /// <inheritdoc/>
    public void Detach()
    {
        if (detached)
        {
            return;
        }

        foreach (var linear in hooked)
        {
            linear.XLora = null;
        }

        foreach (string name in Config.ExpertNames)
        {
            Experts.DeleteAdapter(name);
        }

        Model.XLora = null;
        detached = true;
    }

    private static XLoraModel Build(LlamaForCausalLM model, XLoraConfig config, IReadOnlyList<string> expertFolders, int seed, bool trainable)
    {
        if (model.XLora != null)
        {
            throw new InvalidOperationException("the model already has an X-LoRA attached; detach it first.");
        }

        var busy = model.NamedModules().Where(m => m.Module is ILoraLayer { AllAdapters.Count: > 0 }).Select(m => m.Name).ToList();
        if (busy.Count > 0)
        {
            throw new InvalidOperationException($"X-LoRA attaches to a bare base model; {busy[0]} already carries adapters ({busy.Count} layers do).");
        }

        var peft = new PeftModel(model);
        try
        {
            for (int j = 0; j < expertFolders.Count; j++)
            {
                string name = config.ExpertNames[j];
                var expert = peft.LoadAdapter(expertFolders[j], name, trainable: false);
                string where = Path.Combine(expertFolders[j], Lora.ConfigFile);
                if (expert is not LoraConfig lora)
                {
                    throw new InvalidDataException($"{where}: X-LoRA expert \"{name}\" is peft_type {expert.PeftType}; experts must be LoRA adapters.");
                }

                if (lora.UseDora || lora.ModulesToSave is { Count: > 0 })
                {
                    throw new InvalidDataException($"{where}: X-LoRA expert \"{name}\" uses {(lora.UseDora ? "use_dora" : "modules_to_save")}; experts must be plain LoRA (PEFT refuses DoRA in X-LoRA).");
                }
            }

            var embeddings = model.NamedModules().Where(m => m.Module is Embedding { AllAdapters.Count: > 0 }).Select(m => m.Name).ToList();
            if (embeddings.Count > 0)
            {
                throw new InvalidDataException($"X-LoRA experts target the embedding {embeddings[0]}; experts on Linear layers only are supported.");
            }
        }
        catch
        {
            foreach (string name in peft.Adapters.Keys)
            {
                peft.DeleteAdapter(name);
            }

            throw;
        }

        var state = new XLoraScalingState
        {
            Experts = config.Experts,
            Layerwise = config.LayerwiseScalings,
            ScalingPassValue = (float)config.ScalingPassValue,
            GlobalScalingWeight = (float)config.GlobalScalingWeight,
        };
        var modules = model.NamedModules().Where(m => m.Module is Linear { Adapters.Count: > 0 }).Select(m => (m.Name, Layer: (Linear)m.Module)).ToList();
        var classifier = new XLoraClassifier(config, modules.Count, seed);
        foreach (var p in classifier.Parameters)
        {
            p.Trainable = trainable;
        }

        var xlora = new XLoraModel(model, config, peft, [.. modules.Select(m => m.Name)], classifier, state);
        for (int l = 0; l < modules.Count; l++)
        {
            var layer = modules[l].Layer;
            var experts = config.ExpertNames.Select(name => layer.Adapters.FirstOrDefault(a => a.Name == name)).ToList();
            layer.XLora = new XLoraLayerHook(state, experts, l);
            xlora.hooked.Add(layer);
        }

        model.XLora = xlora;
        model.SyncDevice(refresh: false); // a model on a GPU device gets the classifier there
        return xlora;
    }

    /// <summary>The scaling pass's cache paired with <paramref name="cache"/> (created on first use; truncated with it).</summary>
    private KvCache BaseCache(KvCache cache)
    {
        var paired = baseCaches.GetValue(cache, c => new KvCache(c.Layers, c.Batch, c.Capacity, c.KvDim, c.Device));
        if (paired.Length > cache.Length)
        {
            paired.Truncate(cache.Length);
        }
        else if (paired.Length < cache.Length)
        {
            throw new InvalidOperationException($"the KV cache holds {cache.Length} positions but only {paired.Length} went through X-LoRA's scaling pass: "
                + "fill X-LoRA caches only through the model's Forward while X-LoRA is attached.");
        }

        return paired;
    }
}
