// Builds an EngineAdapter from a PEFT adapter folder with the library's own loading code (PeftModel.LoadAdapter:
// config parsing, key and shape checks, rank/alpha patterns, dtype conversion), not a second parser. The adapter
// is loaded onto a twin of the serving model that shares its base parameter objects (nothing copied), so the
// serving model's layers never see it; its factors are copied out (DoRA: g = m / ‖W + s·B·A‖_row from
// Linear.WeightNorms on the shared weight, 4-bit dequantized as the library does, and B' = diag(g)·B), then the
// adapter is deleted and the parameters' trainable flags restored. Refused (NotSupportedException naming the
// module or field): adapters on embed_tokens or lm_head, modules_to_save, bias "all"/"lora_only" (they change
// the base), several adapters on one layer; NaN or infinite tensors are refused (InvalidDataException).
// Whole-model folders go to their own loaders first: prompt learning (EngineAdapter.PromptLearning.cs),
// bottleneck (EngineBottleneck.cs), MixLoRA (EngineMixLora.cs), X-LoRA (EngineXLora.cs).
using System.Numerics.Tensors;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Engine;

/// <summary>Reads a PEFT adapter folder into an <see cref="EngineAdapter"/> for a given base model.</summary>
internal static class EngineAdapterLoader
{
    private const string InternalName = "engine_load";

    /// <summary>Loads <paramref name="folder"/> as version <paramref name="version"/> of <paramref name="name"/>; not thread-safe (the registry serializes loads).</summary>
    public static EngineAdapter Load(LlamaForCausalLM model, string name, int version, string folder)
    {
        if (PromptLearningFiles.Recognizes(folder))
        {
            return EngineAdapter.FromPromptLearning(model, name, version, folder);
        }

        if (Peft.Bottleneck.BottleneckAdapters.IsBottleneckFolder(folder))
        {
            return EngineBottleneck.Load(model, name, version, folder);
        }

        if (MixLoraAdapter.Recognizes(folder))
        {
            return EngineMixLora.Load(model, name, version, folder);
        }

        if (Peft.XLora.XLoraModel.Recognizes(folder))
        {
            return EngineXLora.Load(model, name, version, folder);
        }

        string configPath = Path.Combine(folder, Lora.ConfigFile);
        if (File.Exists(configPath))
        {
            CheckServable(PeftConfig.Load(configPath), folder);
        }

        var twin = model.ShareBaseParameters();
        var flags = twin.NamedParameters().Select(p => (p.Parameter, p.Parameter.Trainable)).ToList();
        var peft = new PeftModel(twin);
        try
        {
            var config = peft.LoadAdapter(folder, InternalName);
            CheckServable(config, folder);
            var bad = peft.NonFiniteTensors(InternalName);
            if (bad.Count > 0)
            {
                throw new InvalidDataException($"adapter '{name}' ({folder}) holds NaN or infinite values: {string.Join("; ", bad.Take(5))}"
                    + (bad.Count > 5 ? $" and {bad.Count - 5} more." : "."));
            }

            foreach (var (module, layer) in new (string, ILoraLayer)[] { ("model.embed_tokens", twin.Model.EmbedTokens), ("lm_head", twin.LmHead) })
            {
                if (layer.AllAdapters.Count > 0)
                {
                    throw new NotSupportedException($"adapter '{name}' ({folder}) has an adapter on {module}; the engine serves adapters on the decoder "
                        + "layers' q/k/v/o/gate/up/down projections only.");
                }
            }

            var kind = config switch
            {
                Ia3Config => AdapterKind.Ia3,
                LoraConfig { UseDora: true } => AdapterKind.Dora,
                _ => AdapterKind.Lora,
            };
            var parts = new List<AdapterModule>();
            for (int l = 0; l < twin.Model.Layers.Count; l++)
            {
                var layer = twin.Model.Layers[l];
                for (int p = 0; p < Projections.Count; p++)
                {
                    if (Build(Projections.Of(layer, p), l, (Projection)p, name, folder) is { } part)
                    {
                        parts.Add(part);
                    }
                }
            }

            return new EngineAdapter(name, version, folder, kind, twin.Model.Layers.Count, parts);
        }
        finally
        {
            if (peft.Adapters.ContainsKey(InternalName))
            {
                peft.DeleteAdapter(InternalName);
            }

            foreach (var (parameter, trainable) in flags)
            {
                parameter.Trainable = trainable;
            }
        }
    }

    private static void CheckServable(PeftConfig config, string folder)
    {
        if (config.ModulesToSave is { Count: > 0 } saved)
        {
            throw new NotSupportedException($"{folder}: modules_to_save [{string.Join(", ", saved)}] is not supported by the engine "
                + "(it would replace whole modules per sequence); merge the adapter instead.");
        }

        if (config is LoraConfig { Bias: not "none" } lora)
        {
            throw new NotSupportedException($"{folder}: bias \"{lora.Bias}\" is not supported by the engine (the adapter changes the base model's biases); "
                + "only bias \"none\" adapters can share one base.");
        }
    }

    private static AdapterModule? Build(Linear linear, int layer, Projection projection, string name, string folder)
    {
        var all = linear.AllAdapters;
        if (all.Count == 0)
        {
            return null;
        }

        if (all.Count > 1)
        {
            throw new NotSupportedException($"adapter '{name}' ({folder}) stacks {all.Count} adapters on layer {layer} {projection}; the engine serves one per module.");
        }

        int inF = linear.InFeatures, outF = linear.OutFeatures;
        if (all[0] is Ia3Adapter ia3)
        {
            return new AdapterModule(layer, projection, inF, outF, AdapterKind.Ia3, ia3: ia3.L.ToFloat32().ToArray(), ia3Feedforward: ia3.IsFeedforward);
        }

        var lora = (LoraAdapter)all[0];
        var a = lora.A.ToFloat32().ToArray();
        var b = lora.B.ToFloat32().ToArray();
        if (lora.Magnitude is null)
        {
            return new AdapterModule(layer, projection, inF, outF, AdapterKind.Lora, a, b, lora.Scale, lora.Bias?.ToFloat32().ToArray());
        }

        // DoRA: g = m / ‖W + s·B·A‖_row (the same norms and division as the library's DoRA forward), B' = diag(g)·B.
        var g = new float[outF];
        TensorPrimitives.Divide(lora.Magnitude.ToFloat32(), linear.WeightNorms(lora), g);
        int r = lora.Rank;
        for (int o = 0; o < outF; o++)
        {
            var row = b.AsSpan(o * r, r);
            TensorPrimitives.Multiply(row, g[o], row);
        }

        return new AdapterModule(layer, projection, inF, outF, AdapterKind.Dora, a, b, lora.Scale, columnScale: g);
    }
}
