// The prompt-learning side of `peft adapters inspect` and `peft merge` (docs/formats/prompt-learning.md): inspect
// prints the method, N, the model fields, the single tensor prompt_embeddings and says that the adapter does not merge;
// merge refuses a prompt-learning folder (its virtual tokens / prefix add positions, there is no weight delta).
using System.CommandLine;
using System.Globalization;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

/// <summary>`adapters inspect` and the `merge` refusal for PEFT prompt-learning folders.</summary>
internal static class PromptLearningCommands
{
    /// <summary>What a merge of a prompt-learning adapter is told.</summary>
    internal const string NoMerge = "prompt-learning adapters (prompt tuning, P-tuning, prefix tuning) do not merge: they add virtual positions before every sequence, not a weight delta; serve them with --adapter instead";

    /// <summary>Prints a prompt-learning folder as `adapters inspect` does.</summary>
    public static int Inspect(ParseResult parse, TextWriter log, string dir)
    {
        string configPath = Path.Combine(dir, Lora.ConfigFile), weightsPath = Path.Combine(dir, Lora.WeightsFile);
        if (!File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{dir} is not a PEFT adapter folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.");
        }

        var config = PromptLearningConfig.Load(configPath);
        using var file = SafeTensorsFile.Open(weightsPath);
        log.WriteLine($"adapter: {Path.GetFullPath(dir)}");
        string n = config.NumVirtualTokens.ToString(CultureInfo.InvariantCulture);
        log.WriteLine(config.Type switch
        {
            PromptLearningConfig.PTuningType => $"method: P-tuning ({n} virtual tokens; {config.EncoderReparameterizationType} encoder folded into prompt_embeddings)",
            PromptLearningConfig.PrefixTuningType => $"method: prefix tuning ({n} virtual tokens; keys and values per layer{(config.PrefixProjection ? ", projection folded into prompt_embeddings" : "")})",
            _ => $"method: prompt tuning ({n} virtual tokens; init {PromptLearningConfig.InitName(config.PromptTuningInit)})",
        });
        log.WriteLine($"model fields: num_layers {Field(config.NumLayers)}, token_dim {Field(config.TokenDim)}, num_attention_heads {Field(config.NumAttentionHeads)}");
        log.WriteLine("merge: not possible (CanMerge false): " + NoMerge[NoMerge.IndexOf(':', StringComparison.Ordinal)..].TrimStart(':', ' '));
        log.WriteLine($"config ({Lora.ConfigFile}):");
        log.WriteLine(File.ReadAllText(configPath).TrimEnd());
        string metadata = string.Join(", ", file.Metadata.Select(m => $"{m.Key}={m.Value}"));
        log.WriteLine($"tensors ({file.Names.Count}; metadata {(metadata.Length == 0 ? "none" : metadata)}):");
        long parameters = 0;
        foreach (string name in file.Names)
        {
            var info = file.GetInfo(name);
            parameters += info.ElementCount;
            log.WriteLine($"  {name}  {info.DType.HeaderName(),-4}  [{string.Join(", ", info.Shape)}]");
        }

        if (file.Names.Count != 1 || file.Names[0] != PromptLearningAdapter.TensorName)
        {
            parse.InvocationConfiguration.Error.WriteLine($"warning: a prompt-learning adapter holds exactly one tensor, '{PromptLearningAdapter.TensorName}'; loading will refuse this folder.");
        }

        long size = new FileInfo(weightsPath).Length;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trainable params: {parameters:N0}"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"file size: {size:N0} bytes ({ModelCommands.Mib(size)})"));
        return 0;
    }

    /// <summary>Refuses to merge any of <paramref name="dirs"/> that holds a prompt-learning adapter.</summary>
    public static void RefuseMerge(IEnumerable<string> dirs)
    {
        foreach (string dir in dirs)
        {
            if (PromptLearningFiles.Recognizes(dir))
            {
                throw new ArgumentException($"--adapter {dir}: {NoMerge}.");
            }
        }
    }

    private static string Field(int? value) => value?.ToString(CultureInfo.InvariantCulture) ?? "(unset)";

    /// <summary>
    /// Attaches the prompt-learning folder to <paramref name="lm"/> (strict load), runs <paramref name="whileLoaded"/> with it attached and
    /// detaches it again (the engine serves it from its own registry); returns its non-finite tensor, if any.
    /// </summary>
    internal static IReadOnlyList<NonFiniteTensor> CheckAdapter(LlamaForCausalLM lm, string folder, Action<IReadOnlyList<NonFiniteTensor>>? whileLoaded)
    {
        var adapter = PromptLearningAdapter.Load(lm, folder);
        try
        {
            var found = NonFiniteTensor.Scan(Path.Combine(folder, Lora.WeightsFile), PromptLearningAdapter.TensorName, adapter.PromptEmbeddings());
            whileLoaded?.Invoke(found);
            return found;
        }
        finally
        {
            adapter.Detach();
        }
    }

    /// <summary>The virtual positions a prompt-learning folder puts before every sequence (0 for any other folder, or none).</summary>
    internal static int VirtualTokens(string? folder) =>
        folder != null && PromptLearningFiles.Recognizes(folder) ? PromptLearningConfig.Load(Path.Combine(folder, Lora.ConfigFile)).NumVirtualTokens : 0;
}
