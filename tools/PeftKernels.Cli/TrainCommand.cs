// `peft train`: fine-tunes an adapter over a Hugging Face model folder and saves it in PEFT layout:
// LoRA, QLoRA (NF4 + double quantization of the base Linears), LoRA-FA (A frozen), DoRA
// (use_dora) or IA³ (Llama defaults k_proj, v_proj, down_proj, or --targets), optionally LoRA+
// (B's learning rate a multiple of A's), AdamW with warm-up and cosine decay.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Cli;

internal static class TrainCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var data = new Option<string>("--data") { Required = true, HelpName = "file", Description = "Plain text (documents separated by blank lines) or JSONL with a \"text\" field." };
        var method = new Option<string>("--method")
        {
            Description = "lora: adapters over the stored base; qlora: base Linears quantized to NF4 (double quantization) first; lora-fa: lora_A frozen at its random init, only B trains; "
                + "dora: LoRA with DoRA's magnitude vector (use_dora); ia3: IA³ scaling vectors (--r, --alpha, --dropout unused); "
                + "prompt / p-tuning / prefix: PEFT's prompt tuning, P-tuning (MLP encoder), prefix tuning (--virtual-tokens and their options); "
                + "bottleneck: AdapterHub bottleneck adapters (--bottleneck-config and its options); "
                + "xlora: a classifier mixing frozen LoRA experts (--experts) per token; "
                + "mixlora: a router over per-expert LoRA on the MLP plus LoRA on attention (--num-experts, --top-k, --aux-loss-coef, --jitter).",
            DefaultValueFactory = _ => "lora",
        };
        method.AcceptOnlyFromAmong(["lora", "qlora", "lora-fa", "dora", "ia3", .. TrainPromptLearning.Methods, "bottleneck", "xlora", "mixlora"]);
        var r = new Option<int>("--r") { Description = "LoRA rank.", DefaultValueFactory = _ => 16 };
        var alpha = new Option<double>("--alpha") { Description = "lora_alpha (scale = alpha / r).", DefaultValueFactory = _ => 32 };
        var dropout = new Option<double>("--dropout") { Description = "LoRA dropout.", DefaultValueFactory = _ => 0 };
        var targets = new Option<string?>("--targets")
        {
            HelpName = "names",
            Description = "Comma-separated module names, all-linear, or re:REGEX (default q_proj,v_proj; ia3: k_proj,v_proj,down_proj, down_proj scaling its input).",
        };
        var rslora = new Option<bool>("--rslora") { Description = "rsLoRA scaling alpha / sqrt(r)." };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => 2e-4 };
        var loraPlus = new Option<double>("--lora-plus-ratio") { HelpName = "ratio", Description = "LoRA+: lora_B's learning rate is this multiple of lora_A's (1 = plain LoRA; ~16 in the paper).", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => 100 };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch.", DefaultValueFactory = _ => 4 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 128 };
        var accum = new Option<int>("--grad-accum") { Description = "Micro-batches per optimizer step.", DefaultValueFactory = _ => 1 };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps.", DefaultValueFactory = _ => 0 };
        var seed = new Option<int>("--seed") { Description = "Seed of initialisation, batches and dropout.", DefaultValueFactory = _ => 0 };
        var threads = OptionChecks.ThreadsOption();
        var device = ModelCommands.DeviceOption();
        var compute = ComputeOption.Create();
        var output = new Option<string>("--out") { Required = true, HelpName = "dir", Description = "Output folder for the adapter (adapter_config.json + adapter_model.safetensors) and its checkpoints." };
        var run = new TrainingRun();
        var promptLearning = new TrainPromptLearning();
        var distributed = new DistributedRun();
        var command = new Command("train", "Fine-tune a LoRA / QLoRA / DoRA / IA³ adapter on a text file and save it in Hugging Face PEFT layout.")
        {
            model, data, method, r, alpha, dropout, targets, rslora, lr, loraPlus, steps, batch, seq, accum, warmup, seed, threads, device, compute, output,
        };
        var bottleneck = new TrainBottleneck();
        var xlora = new TrainXLora();
        var mixlora = new TrainMixLora();
        foreach (var option in run.Options.Concat(distributed.Options).Concat(promptLearning.Options).Concat(bottleneck.Options).Concat(xlora.Options).Concat(mixlora.Options))
        {
            command.Options.Add(option);
        }

        command.SetAction(parse => distributed.Guard(parse, log =>
        {
            string folder = parse.GetRequiredValue(model);
            int rank = parse.AtLeast(r, 1), stepCount = parse.AtLeast(steps, 1), b = parse.AtLeast(batch, 1), t = parse.AtLeast(seq, 1);
            int accumulation = parse.AtLeast(accum, 1), warmupSteps = parse.AtLeast(warmup, 0);
            double loraAlpha = parse.InRange(alpha, double.NegativeInfinity, double.PositiveInfinity), loraDropout = parse.InRange(dropout, 0, 1, maxOpen: true);
            double peak = parse.InRange(lr, 0, float.MaxValue), ratio = parse.InRange(loraPlus, 0, double.PositiveInfinity, minOpen: true);
            if (peak * ratio > float.MaxValue)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--lr × --lora-plus-ratio must be at most {float.MaxValue} (lora_B's learning rate, float32); got {peak} × {ratio} = {peak * ratio}."));
            }

            var kernel = new KernelOptions(parse.Threads(threads)) { Compute = parse.Compute(compute, device) };
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            string kind = parse.GetValue(method)!;
            bottleneck.CheckOptions(parse, kind, r, alpha, dropout, targets, rslora, loraPlus);
            if (kind == "ia3" && ratio != 1)
            {
                throw new ArgumentException("--lora-plus-ratio applies to the LoRA methods, not to ia3.");
            }

            var mixConfig = kind == "mixlora"
                ? mixlora.Config(parse, rank, loraAlpha, loraDropout, parse.GetValue(rslora), parse.GetValue(targets), Path.GetFullPath(folder))
                : null;
            if (mixConfig == null)
            {
                mixlora.CheckUnused(parse, kind);
            }

            var targetModules = TargetModules.Parse(parse.GetValue(targets) ?? "q_proj,v_proj");
            var config = ModelConfig(folder);
            if (t > config.MaxPositionEmbeddings)
            {
                throw new ArgumentException($"--seq must be at most {config.MaxPositionEmbeddings} (max_position_embeddings in {Path.Combine(folder, "config.json")}); got {t}.");
            }

            string dataPath = parse.GetRequiredValue(data);
            TrainingRun.CheckReadableFile("--data", dataPath);
            int seedValue = parse.GetValue(seed);
            var args = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["verb"] = "train",
                ["--model"] = Path.GetFullPath(folder),
                ["--data"] = "sha256:" + TrainingRun.Sha256(dataPath),
                ["--method"] = kind,
                ["--r"] = rank.ToString(CultureInfo.InvariantCulture),
                ["--alpha"] = TrainingRun.Arg(loraAlpha),
                ["--dropout"] = TrainingRun.Arg(loraDropout),
                ["--targets"] = parse.GetValue(targets) ?? "(default)",
                ["--rslora"] = parse.GetValue(rslora) ? "true" : "false",
                ["--lr"] = TrainingRun.Arg(peak),
                ["--lora-plus-ratio"] = TrainingRun.Arg(ratio),
                ["--steps"] = stepCount.ToString(CultureInfo.InvariantCulture),
                ["--batch"] = b.ToString(CultureInfo.InvariantCulture),
                ["--seq"] = t.ToString(CultureInfo.InvariantCulture),
                ["--grad-accum"] = accumulation.ToString(CultureInfo.InvariantCulture),
                ["--warmup"] = warmupSteps.ToString(CultureInfo.InvariantCulture),
                ["--seed"] = seedValue.ToString(CultureInfo.InvariantCulture),
            };
            promptLearning.Check(parse, kind, args, r, alpha, dropout, targets, rslora, loraPlus);
            xlora.Check(parse, kind, args);
            if (mixConfig != null)
            {
                mixlora.AddArgs(parse, args);
            }

            if (kind == "bottleneck")
            {
                bottleneck.AddArgs(parse, args);
            }

            var dataParallel = distributed.Start(parse, b, parse.GetRequiredValue(device), args);
            if (dataParallel != null && kind is "xlora" or "bottleneck")
            {
                throw new ArgumentException($"--distributed trains the LoRA family, prompt learning and MixLoRA; --method {kind} runs in one process this round.");
            }

            log = distributed.Log(log);
            run.Check(parse, "--out", parse.GetRequiredValue(output), args, ("--model", folder), ("--data", dataPath));

            var lm = LlamaForCausalLM.Load(folder);
            LoadWarnings.Print(parse, lm.NonFiniteTensors);
            var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
            var dataset = TextDataset.Load(dataPath, tokenizer);
            if (dataset.Tokens.Length < t + 1)
            {
                throw new ArgumentException($"--data has {dataset.Tokens.Length} tokens; --seq {t} needs at least {t + 1}.");
            }

            if (kind == "qlora")
            {
                var (before, after) = lm.QuantizeLinears();
                log.WriteLine($"quantized base Linear weights to NF4 (double quantization): {ModelCommands.Mib(before)} → {ModelCommands.Mib(after)}");
            }

            var options = run.Apply(parse, new TrainerOptions
            {
                Steps = stepCount,
                LearningRate = peak,
                WarmupSteps = warmupSteps,
                GradientAccumulation = accumulation,
                LoraPlusRatio = ratio,
                Seed = seedValue,
                Kernel = kernel,
                DataParallel = dataParallel,
            });
            if (TrainPromptLearning.Methods.Contains(kind))
            {
                var adapter = promptLearning.Attach(parse, kind, lm, tokenizer, Path.GetFullPath(folder), seedValue);
                return RunWholeModel(run, distributed, log, lm, adapter, dataset, b, t, on, options);
            }

            if (mixConfig != null)
            {
                return RunWholeModel(run, distributed, log, lm, TrainMixLora.Attach(lm, mixConfig, seedValue, log), dataset, b, t, on, options);
            }

            if (kind == "xlora")
            {
                return xlora.Train(parse, log, lm, dataset, b, t, run, options, on, Path.GetFullPath(folder));
            }

            if (kind == "bottleneck")
            {
                return bottleneck.Train(lm, bottleneck.Config(parse), seedValue, on, () => new Trainer(lm, rng => dataset.Batch(b, t, rng), b, options), run, log, dataset.Tokens.Length);
            }

            var peft = new PeftModel(lm);
            var wrapped = kind == "ia3"
                ? peft.AddAdapter("default", Ia3(parse.GetValue(targets), Path.GetFullPath(folder)), seedValue)
                : peft.AddAdapter("default", new LoraConfig
                {
                    R = rank,
                    LoraAlpha = loraAlpha,
                    LoraDropout = loraDropout,
                    TargetModules = targetModules,
                    UseRsLora = parse.GetValue(rslora),
                    UseDora = kind == "dora",
                    BaseModelNameOrPath = Path.GetFullPath(folder),
                }, seedValue);
            if (kind == "lora-fa")
            {
                peft.FreezeLoraA();
            }

            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{peft.TrainableParameters()} ({wrapped.Count} modules, {dataset.Tokens.Length:N0} data tokens)"));
            lm.To(on);
            var trainer = new Trainer(lm, rng => dataset.Batch(b, t, rng), b, options);
            if (dataParallel != null)
            {
                log.WriteLine(distributed.Describe(b, dataParallel.Shards));
            }

            var clock = System.Diagnostics.Stopwatch.StartNew();
            run.Run(trainer, log, dir => peft.SaveAdapter(dir), writes: distributed.Writes);
            if (dataParallel != null)
            {
                log.WriteLine(distributed.Communication(trainer, clock.Elapsed));
            }

            string outDir = run.OutFolder;
            if (!distributed.Writes)
            {
                return 0;
            }

            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"saved adapter to {outDir} ({ModelCommands.Mib(new FileInfo(Path.Combine(outDir, Lora.WeightsFile)).Length)}); final loss {trainer.LastFiniteLoss:F4}{TrainingRun.Skipped(trainer)}"));
            return 0;
        }));
        return command;
    }

    /// <summary>Trains a whole-model adapter (IModelAdapter) and saves it in its layout into --out.</summary>
    private static int RunWholeModel(TrainingRun run, DistributedRun distributed, TextWriter log, LlamaForCausalLM lm, IModelAdapter adapter, TextDataset dataset, int b, int t,
        Device on, TrainerOptions options)
    {
        long trainable = adapter.Parameters.Where(p => p.Trainable).Sum(p => p.Count);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{adapter.Method}: {trainable:N0} trainable parameters ({dataset.Tokens.Length:N0} data tokens)"));
        lm.To(on);
        var trainer = new Trainer(lm, rng => dataset.Batch(b, t, rng), b, options);
        if (options.DataParallel is { } dataParallel)
        {
            log.WriteLine(distributed.Describe(b, dataParallel.Shards));
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        run.Run(trainer, log, adapter.Save, writes: distributed.Writes);
        if (options.DataParallel != null)
        {
            log.WriteLine(distributed.Communication(trainer, clock.Elapsed));
        }

        if (!distributed.Writes)
        {
            return 0;
        }

        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"saved {adapter.Method} adapter to {run.OutFolder} ({ModelCommands.Mib(new FileInfo(Path.Combine(run.OutFolder, Lora.WeightsFile)).Length)}); final loss {trainer.LastFiniteLoss:F4}{TrainingRun.Skipped(trainer)}"));
        return 0;
    }

    /// <summary>The model folder's config.json, read without loading any weight.</summary>
    internal static LlamaConfig ModelConfig(string folder)
    {
        string configPath = Path.Combine(folder, "config.json");
        if (!Directory.Exists(folder))
        {
            throw new ArgumentException(File.Exists(folder) ? $"--model {folder} is a file; expected a model folder." : $"--model {folder} does not exist.");
        }

        return File.Exists(configPath) ? LlamaConfig.Load(configPath) : throw new ArgumentException($"--model {folder} has no config.json.");
    }

    /// <summary>IA³ with the Llama defaults, or the given targets with the default feed-forward modules among them.</summary>
    private static Ia3Config Ia3(string? targets, string baseModel)
    {
        if (targets == null)
        {
            return new Ia3Config { BaseModelNameOrPath = baseModel };
        }

        var parsed = TargetModules.Parse(targets);
        var feedforward = parsed.Names is { } names
            ? TargetModules.FromList([.. Ia3Config.LlamaDefaultFeedforward.Names!.Where(names.Contains)])
            : Ia3Config.LlamaDefaultFeedforward;
        return new Ia3Config { TargetModules = parsed, FeedforwardModules = feedforward, BaseModelNameOrPath = baseModel };
    }
}
