// Federated averaging of clients' PEFT LoRA adapter folders (docs/formats/methods.md#federated-averaging),
// each client k weighted by n_k (its sample count), w_k = n_k / Σ n:
//   FedAvg (default): every tensor averaged element-wise, θ = Σ_k w_k·θ_k — A and B separately, the
//     common practice (FedIT); cheap, keeps the rank, but the product of averages is not the average
//     of the products: Σ w_k B_k · Σ w_k A_k ≠ Σ w_k B_k·A_k.
//   Exact (exactRank R): per module the weighted mean update ΔW = Σ_k w_k·s·B_k·A_k, re-factorized at
//     rank R by truncated SVD (AdapterCombination's "svd" combination, which never forms ΔW):
//     A' = V_Rᵀ, B' = U_R·Σ_R / s' with s' the scale of the config at rank R (lora_alpha kept); with
//     R ≥ Σ_k r_k it is the mean update itself, to fp32 rounding. Other tensors (lora_B biases) are
//     linear in the output and averaged element-wise.
// The clients must be the same adapter of the same model: the same LoRA hyper-parameters (r, lora_alpha,
// rsLoRA, DoRA, targets, rank and alpha patterns), base_model_name_or_path where both name one, and the
// same tensor names and shapes; anything else is refused naming the client, the field and both values.
using PeftKernels.IO;

namespace PeftKernels.Peft;

/// <summary>Federated averaging of PEFT LoRA adapter folders (FedAvg of A and B, or the exact mean update re-factorized by SVD).</summary>
public static class FederatedAdapters
{
    /// <summary>Averages the clients' adapters and writes the result (adapter_config.json + adapter_model.safetensors) into <paramref name="output"/>.</summary>
    /// <param name="clients">Each client's adapter folder and sample count (&gt; 0); at least two.</param>
    /// <param name="output">The folder to write (created if missing).</param>
    /// <param name="exactRank">Null for FedAvg of A and B; R for the exact mean of the products re-factorized at rank R.</param>
    /// <returns>The number of LoRA modules averaged.</returns>
    /// <exception cref="ArgumentException">Fewer than two clients, a bad weight or rank, or adapters that do not match.</exception>
    public static int Average(IReadOnlyList<(string Folder, long Weight)> clients, string output, int? exactRank = null)
    {
        ArgumentNullException.ThrowIfNull(clients);
        ArgumentNullException.ThrowIfNull(output);
        if (clients.Count < 2)
        {
            throw new ArgumentException($"federated averaging needs at least two adapters; got {clients.Count}.", nameof(clients));
        }

        var loaded = clients.Select(c => Load(c.Folder)).ToList();
        try
        {
            var first = loaded[0];
            for (int k = 1; k < loaded.Count; k++)
            {
                CheckMatch(first, loaded[k]);
            }

            var counts = clients.Select(c => c.Weight).ToList();
            for (int k = 0; k < counts.Count; k++)
            {
                if (counts[k] <= 0)
                {
                    throw new ArgumentException($"the weight of {clients[k].Folder} is {counts[k]}; weights (sample counts) must be > 0.", nameof(clients));
                }
            }

            var tensors = new List<SafeTensor>();
            var config = first.Config;
            int modules = first.Names.Count(n => n.EndsWith(LoraAKey, StringComparison.Ordinal));
            if (exactRank is not { } rank)
            {
                foreach (string name in first.Names)
                {
                    var averaged = AdapterCombination.FederatedAverage(loaded.Select(l => l.File.ReadFloat32(name)).ToList(), counts, name);
                    tensors.Add(SafeTensor.FromFloat32(name, averaged, [.. first.File.GetInfo(name).Shape]));
                }
            }
            else
            {
                config = Exact(loaded, counts, rank, tensors);
            }

            Directory.CreateDirectory(output);
            SafeTensorsWriter.Write(Path.Combine(output, Lora.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            config.Save(Path.Combine(output, Lora.ConfigFile));
            return modules;
        }
        finally
        {
            foreach (var l in loaded)
            {
                l.File.Dispose();
            }
        }
    }

    private const string LoraAKey = ".lora_A.weight";
    private const string LoraBKey = ".lora_B.weight";

    private static LoraConfig Exact(List<Client> loaded, List<long> counts, int rank, List<SafeTensor> tensors)
    {
        var first = loaded[0];
        var config = first.Config;
        if (config.UseDora)
        {
            throw new ArgumentException($"{first.Folder}: --exact re-factorizes B·A, which DoRA's magnitude vectors do not follow; average DoRA adapters without --exact.");
        }

        if (config.RankPattern.Count > 0 || config.AlphaPattern.Count > 0)
        {
            throw new ArgumentException($"{first.Folder}: --exact gives every module rank {rank}; rank_pattern and alpha_pattern are not supported with it.");
        }

        double total = counts.Sum(n => (double)n);
        var weights = counts.Select(n => n / total).ToList();
        var result = config with { R = rank };
        double scaleIn = config.UseRsLora ? config.LoraAlpha / Math.Sqrt(config.R) : config.LoraAlpha / config.R;
        double scaleOut = result.UseRsLora ? result.LoraAlpha / Math.Sqrt(rank) : result.LoraAlpha / rank;
        if (scaleOut == 0 || !double.IsFinite(scaleOut))
        {
            throw new ArgumentException($"{first.Folder}: lora_alpha {config.LoraAlpha} gives scale {scaleOut} at rank {rank}; the exact average needs a finite non-zero scale.");
        }

        foreach (string name in first.Names)
        {
            if (name.EndsWith(LoraBKey, StringComparison.Ordinal))
            {
                continue;
            }

            if (!name.EndsWith(LoraAKey, StringComparison.Ordinal))
            {
                var averaged = AdapterCombination.FederatedAverage(loaded.Select(l => l.File.ReadFloat32(name)).ToList(), counts, name);
                tensors.Add(SafeTensor.FromFloat32(name, averaged, [.. first.File.GetInfo(name).Shape]));
                continue;
            }

            string module = name[..^LoraAKey.Length], bName = module + LoraBKey;
            var aShape = first.File.GetInfo(name).Shape;
            if (!first.File.TryGetInfo(bName, out var bInfo) || aShape.Count != 2 || bInfo.Shape.Count != 2 || bInfo.Shape[1] != aShape[0])
            {
                throw new ArgumentException($"{first.Folder}: {name} has no matching {bName} of shape [out, {(aShape.Count > 0 ? aShape[0] : 0)}].");
            }

            int r = (int)aShape[0], inFeatures = (int)aShape[1], outFeatures = (int)bInfo.Shape[0];
            if (rank > Math.Min(inFeatures, outFeatures))
            {
                throw new ArgumentException($"--rank {rank} exceeds min(in, out) = {Math.Min(inFeatures, outFeatures)} of {module} [{outFeatures}, {inFeatures}].");
            }

            var factors = loaded.Select(l => new LoraFactors(l.File.ReadFloat32(name), l.File.ReadFloat32(bName), r, inFeatures, outFeatures, scaleIn)).ToList();
            var combined = AdapterCombination.Combine(factors, weights, new AdapterCombinationOptions { Type = AdapterCombinationType.Svd, SvdRank = rank });
            var b = combined.B.Select(v => (float)(v / scaleOut)).ToArray();
            tensors.Add(SafeTensor.FromFloat32(name, combined.A, rank, inFeatures));
            tensors.Add(SafeTensor.FromFloat32(bName, b, outFeatures, rank));
        }

        return result;
    }

    private static Client Load(string folder)
    {
        string configPath = Path.Combine(folder, Lora.ConfigFile), weightsPath = Path.Combine(folder, Lora.WeightsFile);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new ArgumentException($"{folder} is not a PEFT adapter folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.");
        }

        var config = PeftConfig.Load(configPath) as LoraConfig
            ?? throw new ArgumentException($"{folder}: federated averaging reads LoRA adapters; {Lora.ConfigFile} has peft_type {PeftConfig.Load(configPath).PeftType}.");
        var file = SafeTensorsFile.Open(weightsPath);
        return new Client(folder, config, file, [.. file.Names.Order(StringComparer.Ordinal)]);
    }

    private static void CheckMatch(Client first, Client other)
    {
        void Same<T>(string field, T a, T b)
        {
            if (!EqualityComparer<T>.Default.Equals(a, b))
            {
                throw new ArgumentException($"{other.Folder} does not match {first.Folder}: {field} is {b} there, {a} in {first.Folder}; federated averaging needs the same adapter of the same model.");
            }
        }

        var (c0, c) = (first.Config, other.Config);
        Same("r", c0.R, c.R);
        Same("lora_alpha", c0.LoraAlpha, c.LoraAlpha);
        Same("use_rslora", c0.UseRsLora, c.UseRsLora);
        Same("use_dora", c0.UseDora, c.UseDora);
        Same("target_modules", Describe(c0.EffectiveTargets), Describe(c.EffectiveTargets));
        Same("rank_pattern", Describe(c0.RankPattern), Describe(c.RankPattern));
        Same("alpha_pattern", Describe(c0.AlphaPattern), Describe(c.AlphaPattern));
        if (c0.BaseModelNameOrPath != null && c.BaseModelNameOrPath != null)
        {
            Same("base_model_name_or_path", c0.BaseModelNameOrPath, c.BaseModelNameOrPath);
        }

        var missing = first.Names.Except(other.Names).ToList();
        var extra = other.Names.Except(first.Names).ToList();
        if (missing.Count > 0 || extra.Count > 0)
        {
            throw new ArgumentException($"{other.Folder} does not match {first.Folder}: "
                + (missing.Count > 0 ? $"it lacks {string.Join(", ", missing.Take(3))}{(missing.Count > 3 ? $" and {missing.Count - 3} more" : "")}" : "")
                + (missing.Count > 0 && extra.Count > 0 ? "; " : "")
                + (extra.Count > 0 ? $"it has {string.Join(", ", extra.Take(3))}{(extra.Count > 3 ? $" and {extra.Count - 3} more" : "")} that {first.Folder} lacks" : "") + ".");
        }

        foreach (string name in first.Names)
        {
            Same($"the shape of {name}", $"[{string.Join(", ", first.File.GetInfo(name).Shape)}]", $"[{string.Join(", ", other.File.GetInfo(name).Shape)}]");
        }
    }

    private static string Describe(TargetModules t) => t.Regex ?? string.Join(",", t.Names!.Order(StringComparer.Ordinal));

    private static string Describe<T>(IReadOnlyDictionary<string, T> map) => string.Join(",", map.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"{e.Key}={e.Value}"));

    private sealed record Client(string Folder, LoraConfig Config, SafeTensorsFile File, IReadOnlyList<string> Names);
}
