// `peft merge`: loads the base and each adapter (LoRA, DoRA or IA³). Without --combination it
//   scales LoRA adapter i's update by --weight i (a plain weighted sum of the ΔW_i: its
//   lora_B, and lora_B bias, times w_i); with --combination (linear, cat, svd, ties,
//   dare_linear, dare_ties, magnitude_prune, and the *_svd types; --density for the
//   pruning ones) it builds one adapter with PeftModel.AddWeightedAdapter and merges
//   that. It merges (safe merge with --safe) and writes a complete model folder. It compares the
//   logits of a fixed 16-token probe before (adapters unmerged) and after (merged,
//   stored in the output dtype) and prints that difference with the merge's storage
//   rounding, so a 4-bit base states the error merging introduced.
// Up front, before anything is loaded: --weight values finite, --combination and --density
// valid, --out neither an input nor inside one nor holding one, and new or empty unless
// --overwrite. Every tensor it would write is checked finite (merged or not, with or without
// --safe): a non-finite result is refused, naming each tensor, its count and its first bad
// element, and nothing is written. A 4-bit base is written dequantized, so the 4-bit count
// covers every 4-bit weight, merged or not.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

internal static class MergeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Required = true, HelpName = "dir", Description = "Hugging Face model folder (fp32, bf16, or 4-bit from `peft quantize`)." };
        var adapters = new Option<string[]>("--adapter") { Required = true, HelpName = "dir", Arity = ArgumentArity.OneOrMore, Description = "PEFT adapter folder (LoRA, DoRA or IA³); repeat for several." };
        var weights = new Option<double[]>("--weight")
        {
            HelpName = "w",
            Arity = ArgumentArity.OneOrMore,
            Description = "Weight of each --adapter, in order (default 1 each): ΔW = Σ wᵢ·ΔWᵢ, or the weights of --combination. Plain LoRA adapters only.",
        };
        var combination = new Option<string?>("--combination")
        {
            HelpName = "type",
            Description = "Combine the LoRA adapters into one first, as PEFT's add_weighted_adapter: linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune (or an *_svd variant).",
        };
        var density = new Option<double?>("--density") { HelpName = "d", Description = "Fraction of entries kept by ties, dare_linear, dare_ties and magnitude_prune." };
        var safe = new Option<bool>("--safe")
        {
            Description = "Check each merged value as it is merged (PEFT's safe_merge) and stop at the first non-finite one. "
                + "Every written tensor is checked either way: a non-finite result is never written.",
        };
        var dtype = new Option<string?>("--dtype") { Description = "Storage of the output weights (default: as the base stores them; a 4-bit base keeps its original dtype)." };
        dtype.AcceptOnlyFromAmong("f32", "bf16");
        var output = new Option<string>("--out")
        {
            Required = true,
            HelpName = "dir",
            Description = "Output model folder (config.json, model.safetensors, tokenizer files): new or empty, outside every input.",
        };
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command("merge", "Merge one or several adapters into a model and write a complete Hugging Face model folder.")
        {
            model, adapters, weights, combination, density, safe, dtype, output, overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            string modelDir = parse.GetRequiredValue(model), outDir = parse.GetRequiredValue(output);
            string[] dirs = parse.GetRequiredValue(adapters);
            PromptLearningCommands.RefuseMerge(dirs);
            double[] w = parse.GetValue(weights) ?? [];
            if (w.Length != 0 && w.Length != dirs.Length)
            {
                throw new ArgumentException($"--weight is given {w.Length} time(s) for {dirs.Length} --adapter folder(s); give one weight per adapter, or none.");
            }

            foreach (double v in w.Where(v => !double.IsFinite(v)))
            {
                throw new ArgumentException($"--weight must be finite; got {v.ToString(CultureInfo.InvariantCulture)}.");
            }

            foreach (string dir in dirs.Where(d => Directory.Exists(d) && Peft.Bottleneck.BottleneckAdapters.IsBottleneckFolder(d)))
            {
                throw new ArgumentException($"--adapter {dir} holds bottleneck adapters, which cannot be merged into the base weights (they are non-linear in the hidden state); serve them unmerged with peft generate / serve --adapter.");
            }

            string? type = parse.GetValue(combination);
            if (parse.GetValue(density) is { } kept)
            {
                if (type == null)
                {
                    throw new ArgumentException("--density applies to --combination; give one.");
                }

                if (!(kept >= 0 && kept <= 1))
                {
                    throw new ArgumentException($"--density must be in [0, 1]; got {kept.ToString(CultureInfo.InvariantCulture)}.");
                }
            }

            if (type != null)
            {
                AdapterCombination.ParseType(type);
            }

            if (dirs.FirstOrDefault(Peft.XLora.XLoraModel.Recognizes) is { } xloraDir)
            {
                throw new NotSupportedException($"--adapter {xloraDir} is an X-LoRA adapter, which cannot be merged: its expert scalings change per token, so no static weight equals the mixture.");
            }

            if (dirs.FirstOrDefault(d => Directory.Exists(d) && MixLoraAdapter.Recognizes(d)) is { } mixloraDir)
            {
                throw new NotSupportedException($"--adapter {mixloraDir} is a MixLoRA adapter. {MixLoraAdapter.NoMergeReason}");
            }

            OutputPaths.Check("--out", outDir, OutputKind.Folder, parse.GetValue(overwrite), [("--model", modelDir), .. dirs.Select(a => ("--adapter", (string?)a))]);
            var lm = LlamaForCausalLM.Load(modelDir);
            var quantized = lm.NamedParameters().Where(p => p.Parameter.DType == TensorDType.Q4)
                .ToDictionary(p => p.Name, p => p.Parameter.ByteSize, StringComparer.Ordinal);
            var peft = new PeftModel(lm);
            string[] names = [.. dirs.Select((_, i) => dirs.Length == 1 ? "default" : $"adapter{i}")];
            for (int i = 0; i < dirs.Length; i++)
            {
                var config = peft.LoadAdapter(dirs[i], names[i]);
                if (w.Length != 0 && type == null)
                {
                    if (config is not LoraConfig { UseDora: false })
                    {
                        throw new ArgumentException($"--weight scales LoRA updates; {dirs[i]} is {(config is Ia3Config ? "IA³" : "DoRA")}.");
                    }

                    Scale(lm, names[i], w[i]);
                }
            }

            LoadWarnings.Print(parse, [.. lm.NonFiniteTensors, .. names.SelectMany(n => peft.NonFiniteTensors(n))]);

            string combined = "";
            if (type != null)
            {
                double[] cw = w.Length == 0 ? [.. dirs.Select(_ => 1.0)] : w;
                peft.AddWeightedAdapter(names, cw, "combined", type, density: parse.GetValue(density));
                combined = string.Create(CultureInfo.InvariantCulture, $" combined with {AdapterCombination.PeftName(AdapterCombination.ParseType(type))} "
                    + $"into one adapter of rank {((LoraConfig)peft.Adapters["combined"]).R} and");
                names = ["combined"];
            }

            int[] probe = [.. Enumerable.Range(0, Math.Min(16, lm.Config.MaxPositionEmbeddings)).Select(i => (int)(((i * 7919L) + 13) % lm.Config.VocabSize))];
            float[] before;
            MergeReport report;
            try
            {
                peft.SetAdapter(names);
                before = Logits(lm, probe);
                peft.MergeAndUnload(out report, parse.GetValue(safe));
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidDataException(e.Message, e);
            }

            var merged = parse.GetValue(dtype) switch
            {
                "f32" => lm.ToStorage(WeightStorage.Float32),
                "bf16" => lm.ToStorage(WeightStorage.BFloat16),
                _ => lm,
            };
            RefuseNonFinite(merged);
            float[] after = Logits(merged, probe);
            double maxDiff = 0, sumDiff = 0, maxLogit = before.Max(Math.Abs);
            for (int i = 0; i < before.Length; i++)
            {
                double d = Math.Abs(after[i] - (double)before[i]);
                maxDiff = Math.Max(maxDiff, d);
                sumDiff += d;
            }

            merged.Save(outDir);
            var weightsText = w.Length == 0 ? "" : $" with weights {string.Join(", ", w.Select(v => v.ToString("G", CultureInfo.InvariantCulture)))}";
            log.WriteLine($"merged {dirs.Length} adapter(s){weightsText}{combined} into {report.Modules.Select(m => m.Module).Distinct().Count()} module(s)");
            if (quantized.Count > 0)
            {
                var written = merged.NamedParameters().Where(p => quantized.ContainsKey(p.Name)).Select(p => WrittenAs(p.Parameter)).ToList();
                int mergedCount = report.Modules.Where(m => m.BaseDType == TensorDType.Q4).Select(m => m.Module).Distinct().Count();
                log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"merging into a 4-bit base: {quantized.Count} 4-bit weight(s) dequantized ({mergedCount} of them merged) and kept as "
                    + $"{string.Join("/", written.Select(x => x.DType).Distinct())} "
                    + $"({ModelCommands.Mib(quantized.Values.Sum())} → {ModelCommands.Mib(written.Sum(x => x.Bytes))}), not re-quantized"));
            }

            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"numerical difference: merged weights differ from W + ΔW (fp32) by max {report.MaxAbsError:G3} (mean {report.MeanAbsError:G3}); "
                + $"the written model's logits on a {probe.Length}-token probe differ from the unmerged adapters by max {maxDiff:G3} "
                + $"(mean {sumDiff / before.Length:G3}, {maxDiff / Math.Max(maxLogit, 1e-30):G3} of the largest |logit|)"));
            log.WriteLine($"wrote {Path.GetFullPath(outDir)}");
            return 0;
        }));
        return command;
    }

    /// <summary>Refuses a model with a non-finite value in any tensor Save would write: each such tensor, its count and first bad element.</summary>
    private static void RefuseNonFinite(LlamaForCausalLM model)
    {
        var bad = new List<string>();
        int tensors = 0;
        foreach (var (name, p) in model.NamedParameters())
        {
            float[] values = p.DType == TensorDType.F32 ? p.Data : p.ToFloat32();
            int first = Array.FindIndex(values, v => !float.IsFinite(v));
            if (first < 0)
            {
                continue;
            }

            tensors++;
            if (bad.Count < 3)
            {
                int columns = p.Shape[^1];
                string at = p.Shape.Length == 2 ? $"[{first / columns}, {first % columns}]" : $"[{first}]";
                int count = values.Count(v => !float.IsFinite(v));
                bad.Add(string.Create(CultureInfo.InvariantCulture, $"'{name}' has {count} of {values.Length} (the first {values[first]} at {at})"));
            }
        }

        if (tensors > 0)
        {
            throw new InvalidDataException($"the merged model has non-finite values in {tensors} tensor(s): {string.Join("; ", bad)}"
                + (tensors > bad.Count ? $"; and {tensors - bad.Count} more" : "") + "; nothing was written.");
        }
    }

    /// <summary>How Save writes a weight: its storage name and bytes (a 4-bit weight dequantized in its original dtype).</summary>
    private static (string DType, long Bytes) WrittenAs(Parameter p) => p.DType switch
    {
        TensorDType.Q4 when p.Quantized.DType is "bfloat16" => ("BF16", p.Count * 2),
        TensorDType.Q4 when p.Quantized.DType is "float16" => ("F16", p.Count * 2),
        TensorDType.Q4 => ("F32", p.Count * 4),
        _ => (p.DType.ToString(), p.ByteSize),
    };

    private static void Scale(LlamaForCausalLM lm, string adapter, double weight)
    {
        foreach (var (_, a) in Lora.Adapters(lm, adapter))
        {
            System.Numerics.Tensors.TensorPrimitives.Multiply(a.B.Data, (float)weight, a.B.Data);
            if (a.Bias != null)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(a.Bias.Data, (float)weight, a.Bias.Data);
            }
        }
    }

    private static float[] Logits(LlamaForCausalLM lm, int[] tokens)
    {
        using var scope = Tape.NoGrad();
        return lm.Forward(tokens).Data;
    }
}
