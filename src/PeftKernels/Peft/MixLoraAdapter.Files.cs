// The MixLoRA adapter folder (docs/formats/mixlora.md#files): adapter_config.json (MixLoraConfig)
// and adapter_model.safetensors holding the reference's weight keys
//   mixlora.layers.{l}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight        attention LoRA
//   mixlora.layers.{l}.mlp.moe_gate.weight                               router [E, hidden]
//   mixlora.layers.{l}.mlp.{gate,up,down}_proj.experts.{e}.lora_{A,B}.weight
// fp32, sorted by key, metadata {"format": "pt"}; each file written atomically, weights first. The
// reference itself pickles the same dictionary into adapter_model.bin; a folder with only that file
// is refused with a clear message (this library reads no pickles). Loading is strict: every expected
// key with its shape, no unexpected key; wrong layer or expert counts are named as such.
using System.Text.RegularExpressions;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

public sealed partial class MixLoraAdapter
{
    /// <summary>The weights file in a MixLoRA folder.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>True when <paramref name="folder"/> holds a MixLoRA adapter (adapter_config.json with peft_type "MIXLORA").</summary>
    public static bool Recognizes(string folder) => MixLoraConfig.IsMixLoraFolder(folder);

    /// <inheritdoc/>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (detached)
        {
            throw new InvalidOperationException("this MixLoRA adapter was detached; nothing to save.");
        }

        Directory.CreateDirectory(folder);
        var tensors = Tensors().OrderBy(t => t.Key, StringComparer.Ordinal)
            .Select(t => SafeTensor.FromFloat32(t.Key, t.Value.Data, [.. t.Value.Shape.Select(d => (long)d)]));
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(Path.Combine(folder, MixLoraConfig.ConfigFile));
    }

    /// <summary>Attaches the MixLoRA adapter saved in <paramref name="folder"/> to <paramref name="model"/> (trainable or frozen).</summary>
    /// <exception cref="FileNotFoundException">The folder lacks adapter_config.json or adapter_model.safetensors.</exception>
    /// <exception cref="InvalidDataException">A bad config, or weights that do not fit the model (missing, unexpected or misshapen keys; layer or expert counts).</exception>
    public static MixLoraAdapter Load(LlamaForCausalLM model, string folder, bool trainable = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string configPath = Path.Combine(folder, MixLoraConfig.ConfigFile), weightsPath = Path.Combine(folder, WeightsFile);
        if (!File.Exists(configPath))
        {
            throw new FileNotFoundException($"{folder} is not a MixLoRA folder: it has no {MixLoraConfig.ConfigFile}.", configPath);
        }

        var config = MixLoraConfig.Load(configPath);
        if (!File.Exists(weightsPath))
        {
            string bin = Path.Combine(folder, "adapter_model.bin");
            throw new FileNotFoundException(File.Exists(bin)
                ? $"{folder} holds adapter_model.bin (a PyTorch pickle, as the MixLoRA reference writes it); this library reads {WeightsFile}: convert it with safetensors' save_file."
                : $"{folder} has no {WeightsFile}.", weightsPath);
        }

        RequireFree(model);
        var expected = ExpectedShapes(model, config);
        using var file = SafeTensorsFile.Open(weightsPath);
        var counts = CountProblems(file.Names, model.Model.Layers.Count, config).ToList();
        var problems = new List<string>();
        var missing = new List<string>();
        foreach (var (key, shape) in expected)
        {
            if (!file.TryGetInfo(key, out var info))
            {
                missing.Add($"missing key '{key}' [{string.Join(", ", shape)}]");
            }
            else if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            {
                problems.Add($"'{key}' is {info.DType.HeaderName()}; MixLoRA tensors must be F32, F16 or BF16");
            }
            else if (!info.Shape.SequenceEqual(shape.Select(d => (long)d)))
            {
                problems.Add($"'{key}': expected shape [{string.Join(", ", shape)}], found [{string.Join(", ", info.Shape)}]");
            }
        }

        var unexpected = file.Names.Where(k => !expected.ContainsKey(k)).Select(k => $"unexpected key '{k}' [{string.Join(", ", file.GetInfo(k).Shape)}]").ToList();
        if (counts.Count + problems.Count + missing.Count + unexpected.Count > 0)
        {
            throw new InvalidDataException($"{weightsPath} does not fit the model with {configPath}: {ProblemList.CountGroups("problem", counts, problems, missing, unexpected)}.");
        }

        Parameter Read(string key) => new(file.ReadFloat32(key), expected[key], trainable);
        var layers = model.Model.Layers;
        var attention = new List<(Linear, LoraAdapter)>();
        var blocks = new List<MixLoraBlock>();
        for (int l = 0; l < layers.Count; l++)
        {
            foreach (var module in AttentionModules.Where(config.Targets))
            {
                string p = $"mixlora.layers.{l}.self_attn.{module}";
                attention.Add((AttentionLinear(layers[l].SelfAttn, module), new LoraAdapter(AttentionAdapterName, Read(p + ".lora_A.weight"), Read(p + ".lora_B.weight"), null,
                    config.LoraAlpha, (float)config.LoraDropout, config.UseRsLora, ForwardContext.Mix(0, (ulong)((l * 8) + Array.IndexOf(AttentionModules, module) + 1)))));
            }

            var factors = new Dictionary<string, (Parameter A, Parameter B)[]>(StringComparer.Ordinal);
            foreach (var module in MlpModules.Where(config.Targets))
            {
                factors[module] = [.. Enumerable.Range(0, config.NumExperts).Select(e =>
                    (Read($"mixlora.layers.{l}.mlp.{module}.experts.{e}.lora_A.weight"), Read($"mixlora.layers.{l}.mlp.{module}.experts.{e}.lora_B.weight")))];
            }

            blocks.Add(MixLoraBlock.FromTensors(config, Read($"mixlora.layers.{l}.mlp.moe_gate.weight"), factors, l));
        }

        return Install(model, config, blocks, attention);
    }

    private static readonly string[] MlpModules = ["gate_proj", "up_proj", "down_proj"];

    /// <summary>Every tensor of the adapter by its file key.</summary>
    private IEnumerable<KeyValuePair<string, Parameter>> Tensors()
    {
        var layers = Model.Model.Layers;
        for (int l = 0; l < layers.Count; l++)
        {
            foreach (var module in AttentionModules.Where(Config.Targets))
            {
                var adapter = attention.First(a => ReferenceEquals(a.Layer, AttentionLinear(layers[l].SelfAttn, module))).Adapter;
                yield return new($"mixlora.layers.{l}.self_attn.{module}.lora_A.weight", adapter.A);
                yield return new($"mixlora.layers.{l}.self_attn.{module}.lora_B.weight", adapter.B);
            }

            foreach (var (name, p) in Blocks[l].NamedParameters())
            {
                yield return new($"mixlora.layers.{l}.mlp.{name}", p);
            }
        }
    }

    /// <summary>The keys a folder for this model and config must hold, with their shapes.</summary>
    private static Dictionary<string, int[]> ExpectedShapes(LlamaForCausalLM model, MixLoraConfig config)
    {
        var shapes = new Dictionary<string, int[]>(StringComparer.Ordinal);
        var layers = model.Model.Layers;
        for (int l = 0; l < layers.Count; l++)
        {
            foreach (var module in AttentionModules.Where(config.Targets))
            {
                var linear = AttentionLinear(layers[l].SelfAttn, module);
                shapes[$"mixlora.layers.{l}.self_attn.{module}.lora_A.weight"] = [config.R, linear.InFeatures];
                shapes[$"mixlora.layers.{l}.self_attn.{module}.lora_B.weight"] = [linear.OutFeatures, config.R];
            }

            shapes[$"mixlora.layers.{l}.mlp.moe_gate.weight"] = [config.NumExperts, layers[l].Mlp.GateProj.InFeatures];
            foreach (var module in MlpModules.Where(config.Targets))
            {
                var linear = MixLoraBlock.Linear(layers[l].Mlp, module);
                for (int e = 0; e < config.NumExperts; e++)
                {
                    shapes[$"mixlora.layers.{l}.mlp.{module}.experts.{e}.lora_A.weight"] = [config.R, linear.InFeatures];
                    shapes[$"mixlora.layers.{l}.mlp.{module}.experts.{e}.lora_B.weight"] = [linear.OutFeatures, config.R];
                }
            }
        }

        return shapes;
    }

    /// <summary>Layer and expert counts found in the file's keys, when they disagree with the model and config (said first, plainly).</summary>
    private static IEnumerable<string> CountProblems(IEnumerable<string> names, int layerCount, MixLoraConfig config)
    {
        var layerIds = new SortedSet<int>();
        var expertIds = new SortedSet<int>();
        foreach (var name in names)
        {
            var m = KeyPattern().Match(name);
            if (m.Success)
            {
                layerIds.Add(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
                if (m.Groups[2].Success)
                {
                    expertIds.Add(int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }

        if (layerIds.Count > 0 && (layerIds.Count != layerCount || layerIds.Max != layerCount - 1))
        {
            yield return $"the file has weights for {layerIds.Count} layers (0..{layerIds.Max}); the model has {layerCount}";
        }

        if (expertIds.Count > 0 && (expertIds.Count != config.NumExperts || expertIds.Max != config.NumExperts - 1))
        {
            yield return $"the file has {expertIds.Count} experts (0..{expertIds.Max}); num_experts is {config.NumExperts}";
        }
    }

    [GeneratedRegex(@"^mixlora\.layers\.(\d+)\.(?:mlp\.[a-z_]+\.experts\.(\d+)\.|)")]
    private static partial Regex KeyPattern();
}
