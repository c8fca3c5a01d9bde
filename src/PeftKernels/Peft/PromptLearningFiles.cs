// Strict reading of a PEFT prompt-learning folder (docs/formats/prompt-learning.md#files): adapter_config.json with
// peft_type PROMPT_TUNING / P_TUNING / PREFIX_TUNING whose model fields match the model (num_layers = its layers,
// token_dim = hidden or kvHeads·headDim, num_attention_heads = heads or kvHeads), and adapter_model.safetensors holding
// exactly one tensor, prompt_embeddings [num_virtual_tokens, token_dim] (prompt / P-tuning) or
// [num_virtual_tokens, 2·num_layers·token_dim] (prefix), in F32, F16 or BF16 (read as fp32). Every mismatch is an
// InvalidDataException naming the file, the field or tensor, and the expected and actual values.
using PeftKernels.IO;
using PeftKernels.Models;

namespace PeftKernels.Peft;

/// <summary>Recognising and reading PEFT prompt-learning folders.</summary>
public static class PromptLearningFiles
{
    /// <summary>True when <paramref name="folder"/> holds adapter_config.json with a prompt-learning peft_type.</summary>
    public static bool Recognizes(string folder)
    {
        string path = Path.Combine(folder, Lora.ConfigFile);
        if (!File.Exists(path))
        {
            return false;
        }

        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes));
            return doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object
                && doc.RootElement.TryGetProperty("peft_type", out var type) && type.ValueKind == System.Text.Json.JsonValueKind.String
                && PromptLearningConfig.Types.Contains(type.GetString());
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidDataException or IOException)
        {
            return false;
        }
    }

    /// <summary>The config and the prompt_embeddings rows [N·W] of <paramref name="folder"/>, checked against <paramref name="model"/>.</summary>
    /// <exception cref="InvalidDataException">A file is missing or bad, or it does not fit the model.</exception>
    public static (PromptLearningConfig Config, float[] Rows) Read(LlamaForCausalLM model, string folder)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string configPath = Path.Combine(folder, Lora.ConfigFile), weightsPath = Path.Combine(folder, Lora.WeightsFile);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new InvalidDataException($"{folder} is not a prompt-learning adapter folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.");
        }

        var config = PromptLearningConfig.Load(configPath);
        var expected = PromptLearningAdapter.WithModelFields(model, config);
        bool prefix = config.Type == PromptLearningConfig.PrefixTuningType;
        Check(configPath, "num_layers", config.NumLayers, expected.NumLayers!.Value, "the model's decoder layers");
        Check(configPath, "token_dim", config.TokenDim, expected.TokenDim!.Value, prefix ? "the model's num_key_value_heads × head_dim" : "the model's hidden_size");
        Check(configPath, "num_attention_heads", config.NumAttentionHeads, expected.NumAttentionHeads!.Value,
            prefix ? "the model's num_key_value_heads (prefix tuning under grouped-query attention)" : "the model's num_attention_heads");
        int n = config.NumVirtualTokens;
        int width = prefix ? 2 * expected.NumLayers!.Value * expected.TokenDim!.Value : expected.TokenDim!.Value;
        using var file = SafeTensorsFile.Open(weightsPath);
        if (file.Names.Count != 1 || file.Names[0] != PromptLearningAdapter.TensorName)
        {
            throw new InvalidDataException($"{weightsPath}: a prompt-learning adapter holds exactly one tensor, '{PromptLearningAdapter.TensorName}'; found {file.Names.Count}: {string.Join(", ", file.Names.Take(8).Select(s => $"'{s}'"))}.");
        }

        var info = file.GetInfo(PromptLearningAdapter.TensorName);
        if (info.Shape.Count != 2 || info.Shape[0] != n || info.Shape[1] != width)
        {
            throw new InvalidDataException($"{weightsPath}: tensor '{PromptLearningAdapter.TensorName}' has shape [{string.Join(", ", info.Shape)}]; expected [{n}, {width}] " +
                (prefix ? $"(num_virtual_tokens, 2 × num_layers {expected.NumLayers} × token_dim {expected.TokenDim})." : "(num_virtual_tokens, token_dim)."));
        }

        return (config, file.ReadFloat32(PromptLearningAdapter.TensorName));
    }

    private static void Check(string path, string field, int? actual, int expected, string what)
    {
        if (actual is { } value && value != expected)
        {
            throw new InvalidDataException($"{path}: \"{field}\" is {value}; this model needs {expected} ({what}).");
        }
    }
}
