// X-LoRA's folder in PEFT's layout (docs/formats/xlora.md#files-peft-layout):
//   adapter_config.json        peft_type XLORA (XLoraConfig)
//   adapter_model.safetensors  the classifier: base_model.internal_xlora_classifier.layers.<i>.weight / .bias (fp32)
//   0/, 1/, …                  the experts, ordinary PEFT LoRA folders (PeftModel.SaveAdapter / LoadAdapter)
// Each file is written atomically (weights first). Loading is strict: hidden size, expert names and folders, the
// classifier's tensor names and shapes (a wrong expert or LoRA-module count shows as a wrong output width), with every
// problem named; a failed load leaves the model as it was.
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Models;

namespace PeftKernels.Peft.XLora;

public sealed partial class XLoraModel
{
    /// <summary>The prefix of the classifier's tensors in adapter_model.safetensors (PEFT's state-dict names).</summary>
    public const string TensorPrefix = "base_model." + LlamaForCausalLM.XLoraClassifierName + ".";

    /// <summary>True when <paramref name="folder"/> holds an adapter_config.json with peft_type XLORA.</summary>
    public static bool Recognizes(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string path = Path.Combine(folder, Lora.ConfigFile);
        if (!File.Exists(path))
        {
            return false;
        }

        try
        {
            using var doc = JsonDocument.Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes));
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("peft_type", out var type)
                && type.ValueKind == JsonValueKind.String && type.GetString() == "XLORA";
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidDataException)
        {
            return false;
        }
    }

    /// <summary>Loads an X-LoRA folder onto a bare <paramref name="model"/> (the classifier trainable or frozen; the experts frozen).</summary>
    /// <exception cref="FileNotFoundException">The folder lacks adapter_config.json or adapter_model.safetensors.</exception>
    /// <exception cref="InvalidDataException">A file does not fit the model (the file and field or tensor are named).</exception>
    public static XLoraModel Load(LlamaForCausalLM model, string folder, bool trainable = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string configPath = Path.Combine(folder, Lora.ConfigFile), weightsPath = Path.Combine(folder, Lora.WeightsFile);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{folder} is not an X-LoRA folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.", configPath);
        }

        var config = XLoraConfig.Load(configPath);
        if (config.HiddenSize != model.Config.HiddenSize)
        {
            throw new InvalidDataException($"{configPath}: hidden_size is {config.HiddenSize} but the model's hidden size is {model.Config.HiddenSize}.");
        }

        var folders = config.ExpertNames.Select(name => Path.Combine(folder, name)).ToList();
        var missing = folders.Where(f => !Directory.Exists(f)).ToList();
        if (missing.Count > 0)
        {
            throw new InvalidDataException($"{configPath}: adapters names {config.Experts} experts but the expert folder {missing[0]} is missing "
                + "(X-LoRA keeps each LoRA expert in the sub-folder named by its key).");
        }

        var extra = Directory.EnumerateDirectories(folder).Select(Path.GetFileName)
            .Where(n => int.TryParse(n, NumberStyles.None, CultureInfo.InvariantCulture, out int i) && i >= config.Experts).ToList();
        if (extra.Count > 0)
        {
            throw new InvalidDataException($"{configPath}: adapters names {config.Experts} experts (\"0\" … \"{config.Experts - 1}\") but the folder also holds expert folder \"{extra[0]}\".");
        }

        var xlora = Build(model, config, folders, seed: 0, trainable);
        try
        {
            xlora.ReadClassifier(weightsPath);
        }
        catch
        {
            xlora.Detach();
            throw;
        }

        return xlora;
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">The adapter was detached.</exception>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (detached)
        {
            throw new InvalidOperationException("this X-LoRA adapter was detached; there is nothing to save.");
        }

        Directory.CreateDirectory(folder);
        foreach (string name in Config.ExpertNames)
        {
            Experts.SaveAdapter(folder, name);
        }

        var tensors = Classifier.NamedParameters().Select(p => (Key: TensorPrefix + p.Name, p.Parameter)).OrderBy(t => t.Key, StringComparer.Ordinal);
        SafeTensorsWriter.Write(Path.Combine(folder, Lora.WeightsFile),
            tensors.Select(t => SafeTensor.FromFloat32(t.Key, t.Parameter.Data, [.. t.Parameter.Shape.Select(d => (long)d)])),
            new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(Path.Combine(folder, Lora.ConfigFile));
    }

    private void ReadClassifier(string weightsPath)
    {
        using var file = SafeTensorsFile.Open(weightsPath);
        var expected = Classifier.NamedParameters().ToDictionary(p => TensorPrefix + p.Name, p => p.Parameter, StringComparer.Ordinal);
        var problems = new List<string>();
        var missing = expected.Keys.Where(k => !file.Contains(k)).Select(k => $"missing tensor '{k}' [{string.Join(", ", expected[k].Shape)}]").ToList();
        var unexpected = file.Names.Where(k => !expected.ContainsKey(k)).Select(k => $"unexpected tensor '{k}' [{string.Join(", ", file.GetInfo(k).Shape)}]").ToList();
        foreach (var (key, p) in expected.Where(e => file.Contains(e.Key)))
        {
            var info = file.GetInfo(key);
            if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            {
                problems.Add($"'{key}' is {info.DType.HeaderName()}; classifier tensors must be F32, F16 or BF16");
            }
            else if (!info.Shape.SequenceEqual(p.Shape.Select(d => (long)d)))
            {
                problems.Add($"'{key}' has shape [{string.Join(", ", info.Shape)}]; expected [{string.Join(", ", p.Shape)}] "
                    + $"({Config.Experts} experts{(Config.LayerwiseScalings ? $" × {LoraModules.Count} LoRA modules" : string.Empty)}, hidden size {Config.HiddenSize})");
            }
        }

        if (problems.Count + missing.Count + unexpected.Count > 0)
        {
            throw new InvalidDataException($"{weightsPath} does not fit the X-LoRA config and experts: {ProblemList.CountGroups("problem", problems, missing, unexpected)}.");
        }

        foreach (var (key, p) in expected)
        {
            file.ReadFloat32(key).CopyTo(p.Data, 0);
            p.RefreshMirror(); // a parameter already on a GPU device gets the loaded values there
        }
    }
}
