// The bottleneck folders in AdapterHub's layout (docs/formats/bottleneck-adapters.md#files):
//   one adapter     adapter_config.json + adapter.safetensors, keys
//                   model.layers.{i}.{attention_adapters|output_adapters}.adapters.{NAME}.{adapter_down.0|adapter_up}.{weight|bias}
//   a composition   adapter_setup.json, one sub-folder per adapter (named after it) and one per fusion
//                   ("a,b": adapter_fusion_config.json + model_adapter_fusion.safetensors, keys
//                   model.layers.{i}.{site}.adapter_fusion_layer.{a,b}.{query|key|value}.{weight|bias})
// Files go through AtomicFile / SafeTensorsWriter (tensors sorted by key), so a save → load → save is
// byte-identical. Loading is strict: the hidden size, the layer count, the adapter names and every
// tensor's presence and shape are checked, each failure naming the file and the tensor or field.
using System.Text.Encodings.Web;
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Models;

namespace PeftKernels.Peft.Bottleneck;

public sealed partial class BottleneckAdapters
{
    /// <summary>The weights file of one adapter.</summary>
    public const string WeightsFileName = "adapter.safetensors";

    /// <summary>The config file of one fusion.</summary>
    public const string FusionConfigFileName = "adapter_fusion_config.json";

    /// <summary>The weights file of one fusion.</summary>
    public const string FusionWeightsFileName = "model_adapter_fusion.safetensors";

    /// <summary>True when <paramref name="folder"/> holds an AdapterHub bottleneck adapter or an adapter_setup.json.</summary>
    public static bool IsBottleneckFolder(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (File.Exists(Path.Combine(folder, AdapterSetupJson.FileName)))
        {
            return true;
        }

        string config = Path.Combine(folder, BottleneckConfigJson.FileName);
        if (!File.Exists(config) || !File.Exists(Path.Combine(folder, WeightsFileName)))
        {
            return false;
        }

        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(config));
            var root = document.RootElement;
            return root.ValueKind == JsonValueKind.Object && root.TryGetProperty("config", out var c) && c.ValueKind == JsonValueKind.Object
                && !root.TryGetProperty("peft_type", out _) && c.TryGetProperty("reduction_factor", out _);
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Attaches the adapter (or composition) in <paramref name="folder"/> to <paramref name="model"/> and makes it the active
    /// setup; with <paramref name="registerAs"/>, it is also registered for per-row selection under that name.
    /// </summary>
    /// <exception cref="InvalidDataException">A bad file (named, with the field or tensor).</exception>
    public static BottleneckAdapters Load(LlamaForCausalLM model, string folder, bool trainable = false, string? registerAs = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var set = Of(model);
        string setupPath = Path.Combine(folder, AdapterSetupJson.FileName);
        AdapterSetup setup;
        if (File.Exists(setupPath))
        {
            setup = AdapterSetupJson.Read(setupPath);
            foreach (var name in setup.AdapterNames.Where(n => !set.configs.ContainsKey(n)))
            {
                set.LoadAdapter(Path.Combine(folder, name), name, trainable);
            }

            foreach (var fuse in setup.Fusions.Where(f => !set.fusionConfigs.ContainsKey(f.FusionName)))
            {
                set.LoadFusion(Path.Combine(folder, fuse.FusionName), fuse, trainable);
            }
        }
        else
        {
            setup = AdapterSetup.Single(set.LoadAdapter(folder, null, trainable));
        }

        set.ActiveSetup = setup;
        if (registerAs != null)
        {
            set.RegisterSetup(registerAs, setup);
        }

        return set;
    }

    /// <summary>Saves the active setup: one adapter's folder, or adapter_setup.json with a sub-folder per adapter and fusion.</summary>
    /// <exception cref="InvalidOperationException">No active setup.</exception>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var setup = activeSetup ?? throw new InvalidOperationException("no active bottleneck setup to save; set ActiveSetup first.");
        if (setup.Kind == AdapterSetupKind.Single)
        {
            SaveAdapter(setup.Name!, folder);
            return;
        }

        Directory.CreateDirectory(folder);
        foreach (var name in setup.AdapterNames)
        {
            SaveAdapter(name, Path.Combine(folder, name));
        }

        foreach (var fuse in setup.Fusions)
        {
            SaveFusion(fuse, Path.Combine(folder, fuse.FusionName));
        }

        AtomicFile.Write(Path.Combine(folder, AdapterSetupJson.FileName), s => s.Write(AdapterSetupJson.Write(setup)));
    }

    /// <summary>Saves adapter <paramref name="name"/> into <paramref name="folder"/> (adapter_config.json + adapter.safetensors).</summary>
    public void SaveAdapter(string name, string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var config = ConfigOf(name);
        Directory.CreateDirectory(folder);
        var info = infos[name] with { Name = name };
        AtomicFile.Write(Path.Combine(folder, BottleneckConfigJson.FileName), s => s.Write(BottleneckConfigJson.Write(config, info)));
        SafeTensorsWriter.Write(Path.Combine(folder, WeightsFileName), Tensors(sites.SelectMany(s => s.AdapterParameters(name))));
    }

    /// <summary>Saves the fusion layers of <paramref name="fuse"/> into <paramref name="folder"/>.</summary>
    public void SaveFusion(AdapterSetup fuse, string folder)
    {
        ArgumentNullException.ThrowIfNull(fuse);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var config = FusionConfigOf(fuse.FusionName);
        Directory.CreateDirectory(folder);
        AtomicFile.Write(Path.Combine(folder, FusionConfigFileName), s => s.Write(FusionJson(fuse, config)));
        SafeTensorsWriter.Write(Path.Combine(folder, FusionWeightsFileName), Tensors(sites.SelectMany(s => s.FusionParameters(fuse.FusionName))));
    }

    private static IEnumerable<SafeTensor> Tensors(IEnumerable<(string Key, Parameter Parameter)> parameters) =>
        parameters.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => SafeTensor.FromFloat32(p.Key, p.Parameter.Data, [.. p.Parameter.Shape.Select(d => (long)d)]));

    private byte[] FusionJson(AdapterSetup fuse, AdapterFusionConfig config)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WritePropertyName("adapter_names");
            w.WriteStartArray();
            foreach (var child in fuse.Children)
            {
                w.WriteStringValue(child.Last);
            }

            w.WriteEndArray();
            w.WriteStartObject("config");
            w.WriteNull("dropout_prob");
            w.WriteBoolean("key", true);
            w.WriteBoolean("query", true);
            w.WriteBoolean("query_before_ln", config.QueryBeforeLn);
            w.WriteBoolean("regularization", config.Regularization);
            w.WriteBoolean("residual_before", false);
            w.WriteBoolean("temperature", false);
            w.WriteBoolean("value", config.Value);
            w.WriteBoolean("value_before_softmax", true);
            w.WriteBoolean("value_initialized", config.ValueInitialized);
            w.WriteEndObject();
            BottleneckConfigJson.WriteInfo(w, new AdapterFileInfo(fuse.FusionName, Model.Config.HiddenSize, ModelName, AdapterFileInfo.DefaultVersion));
            w.WriteEndObject();
        }

        stream.WriteByte((byte)'\n');
        return stream.ToArray();
    }

    private string LoadAdapter(string folder, string? expectedName, bool trainable)
    {
        string configPath = Path.Combine(folder, BottleneckConfigJson.FileName);
        var (config, info) = BottleneckConfigJson.Read(configPath);
        if (expectedName != null && info.Name != expectedName)
        {
            throw new InvalidDataException($"{configPath}: the adapter is named '{info.Name}' but adapter_setup.json expects '{expectedName}' in this folder.");
        }

        CheckHidden(configPath, info.HiddenSize);
        int layers = Model.Model.Layers.Count;
        if (config.LeaveOut.Any(l => l >= layers))
        {
            throw new InvalidDataException($"{configPath}: leave_out names layer {config.LeaveOut.Max()} but the model has {layers} layers.");
        }

        try
        {
            Add(info.Name, config, info, seed: 0, trainable);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{configPath}: {e.Message}", e);
        }

        try
        {
            ReadTensors(Path.Combine(folder, WeightsFileName), sites.SelectMany(s => s.AdapterParameters(info.Name)));
        }
        catch
        {
            Remove(info.Name);
            throw;
        }

        return info.Name;
    }

    private void LoadFusion(string folder, AdapterSetup fuse, bool trainable)
    {
        string configPath = Path.Combine(folder, FusionConfigFileName);
        using (var document = JsonFiles.Parse(configPath))
        {
            var root = document.RootElement;
            var namesElement = JsonFiles.Property(root, "adapter_names", configPath)!.Value;
            var fused = namesElement.ValueKind == JsonValueKind.Array ? namesElement.EnumerateArray().Select(e => e.GetString()).ToList() : [];
            if (!fused.SequenceEqual(fuse.Children.Select(c => c.Last)))
            {
                throw new InvalidDataException($"{configPath}: adapter_names [{string.Join(", ", fused)}] do not match the fused adapters [{fuse.FusionName}] of adapter_setup.json.");
            }

            var c = JsonFiles.Object(root, "config", configPath);
            JsonFiles.RequireValue(c, "residual_before", false, configPath);
            JsonFiles.RequireValue(c, "temperature", false, configPath);
            JsonFiles.RequireValue(c, "key", true, configPath);
            JsonFiles.RequireValue(c, "query", true, configPath);
            JsonFiles.RequireZeroOrAbsent(c, "dropout_prob", configPath);
            CheckHidden(configPath, (int)JsonFiles.Number(root, "hidden_size", configPath));
            var config = new AdapterFusionConfig(JsonFiles.Bool(c, "value", configPath), JsonFiles.Bool(c, "regularization", configPath),
                JsonFiles.Bool(c, "query_before_ln", configPath, fallback: false), c.TryGetProperty("value_initialized", out var vi) && vi.ValueKind == JsonValueKind.True);
            AddFusion(fuse, config, seed: 0, trainable);
        }

        try
        {
            ReadTensors(Path.Combine(folder, FusionWeightsFileName), sites.SelectMany(s => s.FusionParameters(fuse.FusionName)));
        }
        catch
        {
            Remove(fuse.FusionName);
            throw;
        }
    }

    private void CheckHidden(string path, int hidden)
    {
        if (hidden != Model.Config.HiddenSize)
        {
            throw new InvalidDataException($"{path}: hidden_size is {hidden} but the model's hidden size is {Model.Config.HiddenSize}.");
        }
    }

    private void ReadTensors(string path, IEnumerable<(string Key, Parameter Parameter)> expected)
    {
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"{path} is missing.");
        }

        using var file = SafeTensorsFile.Open(path);
        var wanted = expected.ToDictionary(e => e.Key, e => e.Parameter, StringComparer.Ordinal);
        int layers = Model.Model.Layers.Count;
        foreach (var key in file.Names)
        {
            if (wanted.ContainsKey(key))
            {
                continue;
            }

            var parts = key.Split('.');
            if (parts.Length > 2 && parts[0] == "model" && parts[1] == "layers" && int.TryParse(parts[2], out int layer) && layer >= layers)
            {
                throw new InvalidDataException($"{path}: tensor '{key}' is for layer {layer} but the model has {layers} layers (0..{layers - 1}).");
            }

            throw new InvalidDataException($"{path}: unexpected tensor '{key}' (the config names no such adapter, site or parameter).");
        }

        foreach (var (key, p) in wanted)
        {
            if (!file.TryGetInfo(key, out var info))
            {
                throw new InvalidDataException($"{path}: tensor '{key}' is missing.");
            }

            if (!info.Shape.SequenceEqual(p.Shape.Select(d => (long)d)))
            {
                throw new InvalidDataException($"{path}: tensor '{key}' has shape [{string.Join(", ", info.Shape)}]; expected [{string.Join(", ", p.Shape)}].");
            }

            file.ReadFloat32(key).CopyTo(p.Data, 0);
            p.RefreshMirror(); // a parameter already on a GPU device gets the loaded values there
        }
    }
}
