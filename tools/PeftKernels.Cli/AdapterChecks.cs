// The warnings of `peft adapters inspect`, which reads an adapter folder without a model: tensors
// with NaN or infinite values; LoRA tensors whose rank disagrees with adapter_config.json's r (after
// rank_pattern), as when r = 8 is written for rank-16 tensors (loading into a model refuses that);
// and a module whose lora_A, lora_B (and DoRA magnitude) shapes disagree with each other.
using System.Globalization;
using PeftKernels.IO;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

/// <summary>Consistency checks of an adapter file against its config and itself, as warning lines.</summary>
internal static class AdapterChecks
{
    private const string Prefix = "base_model.model.";

    /// <summary>Every warning about <paramref name="file"/> read with <paramref name="config"/>, in file order.</summary>
    internal static List<string> Warnings(SafeTensorsFile file, PeftConfig config)
    {
        var warnings = new List<string>();
        var nonFinite = file.Names.Where(n => file.GetInfo(n).DType is SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16)
            .SelectMany(n => NonFiniteTensor.Scan(file.Path, n, file.ReadFloat32(n))).ToList();
        warnings.AddRange(nonFinite.Take(ProblemList.Shown).Select(t => t.ToString()));
        if (nonFinite.Count > ProblemList.Shown)
        {
            warnings.Add(string.Create(CultureInfo.InvariantCulture, $"… and {nonFinite.Count - ProblemList.Shown} more tensor(s) with NaN or infinite values"));
        }

        if (config is LoraConfig lora)
        {
            warnings.AddRange(LoraShapes(file, lora));
        }

        return warnings;
    }

    private static IEnumerable<string> LoraShapes(SafeTensorsFile file, LoraConfig lora)
    {
        var modules = new SortedDictionary<string, (long[]? A, long[]? B, long[]? Magnitude)>(StringComparer.Ordinal);
        foreach (string name in file.Names)
        {
            if (!name.StartsWith(Prefix, StringComparison.Ordinal))
            {
                continue;
            }

            long[] shape = [.. file.GetInfo(name).Shape];
            string? module = Strip(name, ".lora_A.weight") ?? Strip(name, ".lora_embedding_A");
            if (module != null && shape.Length == 2)
            {
                modules[module] = modules.GetValueOrDefault(module) with { A = shape };
                continue;
            }

            module = Strip(name, ".lora_B.weight") ?? Strip(name, ".lora_embedding_B");
            if (module != null && shape.Length == 2)
            {
                modules[module] = modules.GetValueOrDefault(module) with { B = shape };
                continue;
            }

            module = Strip(name, ".lora_magnitude_vector");
            if (module != null)
            {
                modules[module] = modules.GetValueOrDefault(module) with { Magnitude = shape };
            }
        }

        var byRank = new SortedDictionary<(int Config, long Tensor), List<string>>();
        var disagreements = new List<string>();
        foreach (var (module, (a, b, magnitude)) in modules)
        {
            bool embedding = file.Contains(Prefix + module + ".lora_embedding_A");

            // Linear: A [r, in], B [out, r]; embedding: A [r, vocab], B [hidden, r] (PEFT stores them the same way round).
            long? rankA = a?[0], rankB = b?[1];
            if (rankA != null && rankB != null && rankA != rankB)
            {
                disagreements.Add($"module '{module}': lora{(embedding ? "_embedding" : "")}_A [{string.Join(", ", a!)}] has rank {rankA} but lora{(embedding ? "_embedding" : "")}_B [{string.Join(", ", b!)}] has rank {rankB}");
            }

            if (magnitude != null && b != null && (magnitude.Length != 1 || magnitude[0] != b[0]))
            {
                disagreements.Add($"module '{module}': lora_magnitude_vector [{string.Join(", ", magnitude)}] does not match lora_B's {b[0]} output features");
            }

            long? rank = rankA ?? rankB;
            int expected = lora.RankAndAlpha(module).R;
            if (rank != null && rank != expected)
            {
                var key = (expected, rank.Value);
                if (!byRank.TryGetValue(key, out var list))
                {
                    byRank[key] = list = [];
                }

                list.Add($"'{module}'");
            }
        }

        foreach (var ((config, tensor), list) in byRank)
        {
            yield return string.Create(CultureInfo.InvariantCulture,
                $"{Lora.ConfigFile} says r = {config} but the tensors of {list.Count} module(s) have rank {tensor} (loading refuses them): {ProblemList.Join(list)}");
        }

        if (disagreements.Count > 0)
        {
            yield return $"the LoRA tensors disagree with each other: {ProblemList.Count(disagreements, "module")}";
        }
    }

    private static string? Strip(string name, string suffix) =>
        name.EndsWith(suffix, StringComparison.Ordinal) ? name[Prefix.Length..^suffix.Length] : null;
}
