// `peft score`, `peft generate` and `peft train`: the causal-LM verbs over a Hugging Face
// model folder (LlamaForCausalLM), with an optional PEFT LoRA adapter folder.
//   score    prints {"tokens": N, "loss": L, "perplexity": P}: mean loss over N−1 predictions
//   generate greedy or temperature/top-p sampling with a KV cache
//   train    LoRA, QLoRA (NF4 + double quantization of the base Linears), LoRA-FA (A frozen),
//            DoRA (use_dora) or IA³ (Llama defaults k_proj, v_proj, down_proj, or --targets),
//            optionally LoRA+ (B's learning rate a multiple of A's), AdamW with warm-up and
//            cosine decay, then the adapter in PEFT layout in --out
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Cli;

internal static class ModelCommands
{
    public static Command CreateScore()
    {
        var model = ModelOption();
        var adapter = AdapterOption();
        var tokens = new Option<string>("--tokens") { Required = true, HelpName = "ids", Description = "Comma-separated token ids, at least two." };
        var threads = OptionChecks.ThreadsOption();
        var device = DeviceOption();
        var command = new Command("score", "Causal-LM loss and perplexity of a token sequence (mean over the N−1 predicted positions), as one JSON line.")
        {
            model, adapter, tokens, threads, device,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var ids = ParseTokens(parse.GetRequiredValue(tokens), "--tokens");
            var kernel = new KernelOptions(parse.Threads(threads));
            var on = ParseDevice(parse.GetRequiredValue(device));
            var lm = LoadModel(parse.GetRequiredValue(model), parse.GetValue(adapter));
            lm.To(on);
            double loss = lm.Score(ids, new ForwardContext(0, kernel));
            CheckLogits(lm, ids[..^1], kernel);
            log.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object> { ["tokens"] = ids.Length, ["loss"] = loss, ["perplexity"] = Math.Exp(loss) }));
            return 0;
        }));
        return command;
    }

    public static Command CreateGenerate()
    {
        var model = ModelOption();
        var adapter = AdapterOption();
        var prompt = new Option<string?>("--prompt") { HelpName = "text", Description = "Prompt text, encoded with the model's tokenizer (or bytes when it has none)." };
        var promptTokens = new Option<string?>("--prompt-tokens") { HelpName = "ids", Description = "Prompt as comma-separated token ids; the output is ids too." };
        var maxNew = new Option<int>("--max-new-tokens") { Required = true, HelpName = "n", Description = "Tokens to generate." };
        var temperature = new Option<float>("--temperature") { HelpName = "t", Description = "0 = greedy; > 0 samples from softmax(logits / t).", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { HelpName = "p", Description = "Nucleus sampling mass in (0, 1].", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Sampler seed.", DefaultValueFactory = _ => 0 };
        var threads = OptionChecks.ThreadsOption();
        var device = DeviceOption();
        var command = new Command("generate", "Generate tokens after a prompt (greedy, or temperature / top-p sampling) with a KV cache.")
        {
            model, adapter, prompt, promptTokens, maxNew, temperature, topP, seed, threads, device,
        };
        command.Validators.Add(result =>
        {
            if ((result.GetValue(prompt) == null) == (result.GetValue(promptTokens) == null))
            {
                result.AddError("give exactly one of --prompt and --prompt-tokens.");
            }
        });
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            string folder = parse.GetRequiredValue(model);
            int newTokens = parse.AtLeast(maxNew, 0);
            float t = parse.InRange(temperature, 0, double.PositiveInfinity), p = parse.InRange(topP, 0, 1, minOpen: true);
            var kernel = new KernelOptions(parse.Threads(threads));
            var on = ParseDevice(parse.GetRequiredValue(device));
            var lm = LoadModel(folder, parse.GetValue(adapter));
            lm.To(on);
            var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
            string? text = parse.GetValue(prompt);
            int[] ids = text != null ? [.. (tokenizer.BosId is int bos ? [bos] : Array.Empty<int>()), .. tokenizer.Encode(text)]
                : ParseTokens(parse.GetValue(promptTokens)!, "--prompt-tokens");
            if (ids.Length == 0)
            {
                throw new ArgumentException("the prompt encodes to no tokens.");
            }

            var stops = lm.Config.EosTokenId ?? (tokenizer.EosId is int eos ? [eos] : null);
            var options = new GenerationOptions(t, p, parse.GetValue(seed), stops);
            CheckLogits(lm, ids, kernel);
            var generated = lm.Generate(ids, newTokens, options, new ForwardContext(0, kernel));
            log.WriteLine(text != null ? text + tokenizer.Decode(generated) : string.Join(",", generated));
            return 0;
        }));
        return command;
    }

    public static Command CreateTrain()
    {
        var model = ModelOption();
        var data = new Option<string>("--data") { Required = true, HelpName = "file", Description = "Plain text (documents separated by blank lines) or JSONL with a \"text\" field." };
        var method = new Option<string>("--method")
        {
            Description = "lora: adapters over the stored base; qlora: base Linears quantized to NF4 (double quantization) first; lora-fa: lora_A frozen at its random init, only B trains; "
                + "dora: LoRA with DoRA's magnitude vector (use_dora); ia3: IA³ scaling vectors (--r, --alpha, --dropout unused).",
            DefaultValueFactory = _ => "lora",
        };
        method.AcceptOnlyFromAmong("lora", "qlora", "lora-fa", "dora", "ia3");
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
        var device = DeviceOption();
        var output = new Option<string>("--out") { Required = true, HelpName = "dir", Description = "Output folder for the adapter (adapter_config.json + adapter_model.safetensors)." };
        var command = new Command("train", "Fine-tune a LoRA / QLoRA / DoRA / IA³ adapter on a text file and save it in Hugging Face PEFT layout.")
        {
            model, data, method, r, alpha, dropout, targets, rslora, lr, loraPlus, steps, batch, seq, accum, warmup, seed, threads, device, output,
        };

        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            string folder = parse.GetRequiredValue(model);
            int rank = parse.AtLeast(r, 1), stepCount = parse.AtLeast(steps, 1), b = parse.AtLeast(batch, 1), t = parse.AtLeast(seq, 1);
            int accumulation = parse.AtLeast(accum, 1), warmupSteps = parse.AtLeast(warmup, 0);
            double loraAlpha = parse.InRange(alpha, double.NegativeInfinity, double.PositiveInfinity), loraDropout = parse.InRange(dropout, 0, 1, maxOpen: true);
            double peak = parse.InRange(lr, 0, double.PositiveInfinity), ratio = parse.InRange(loraPlus, 0, double.PositiveInfinity, minOpen: true);
            var kernel = new KernelOptions(parse.Threads(threads));
            var on = ParseDevice(parse.GetRequiredValue(device));
            var lm = LlamaForCausalLM.Load(folder);
            var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
            var dataset = TextDataset.Load(parse.GetRequiredValue(data), tokenizer);
            if (dataset.Tokens.Length < t + 1)
            {
                throw new ArgumentException($"--data has {dataset.Tokens.Length} tokens; --seq {t} needs at least {t + 1}.");
            }

            if (parse.GetValue(method) == "qlora")
            {
                var (before, after) = lm.QuantizeLinears();
                log.WriteLine($"quantized base Linear weights to NF4 (double quantization): {Mib(before)} → {Mib(after)}");
            }

            string kind = parse.GetValue(method)!;
            if (kind == "ia3" && ratio != 1)
            {
                throw new ArgumentException("--lora-plus-ratio applies to the LoRA methods, not to ia3.");
            }

            var peft = new PeftModel(lm);
            var wrapped = kind == "ia3"
                ? peft.AddAdapter("default", Ia3(parse.GetValue(targets), Path.GetFullPath(folder)), parse.GetValue(seed))
                : peft.AddAdapter("default", new LoraConfig
                {
                    R = rank,
                    LoraAlpha = loraAlpha,
                    LoraDropout = loraDropout,
                    TargetModules = TargetModules.Parse(parse.GetValue(targets) ?? "q_proj,v_proj"),
                    UseRsLora = parse.GetValue(rslora),
                    UseDora = kind == "dora",
                    BaseModelNameOrPath = Path.GetFullPath(folder),
                }, parse.GetValue(seed));
            if (parse.GetValue(method) == "lora-fa")
            {
                peft.FreezeLoraA();
            }

            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{peft.TrainableParameters()} ({wrapped.Count} modules, {dataset.Tokens.Length:N0} data tokens)"));
            var options = new TrainerOptions
            {
                Steps = stepCount,
                LearningRate = peak,
                WarmupSteps = warmupSteps,
                GradientAccumulation = accumulation,
                LoraPlusRatio = ratio,
                Seed = parse.GetValue(seed),
                Kernel = kernel,
            };
            lm.To(on);
            var trainer = new Trainer(lm, rng => dataset.Batch(b, t, rng), b, options);
            TrainingView.Run(trainer, log);
            string outDir = parse.GetRequiredValue(output);
            peft.SaveAdapter(outDir);
            log.WriteLine($"saved adapter to {Path.GetFullPath(outDir)} ({Mib(new FileInfo(Path.Combine(outDir, Lora.WeightsFile)).Length)}); final loss {trainer.Losses[^1]:F4}");
            return 0;
        }));
        return command;
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

    internal static string Mib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:F2} MiB");

    private static Option<string> ModelOption() =>
        new("--model") { Required = true, HelpName = "dir", Description = "Hugging Face model folder (config.json + model.safetensors or a sharded index)." };

    private static Option<string?> AdapterOption() =>
        new("--adapter") { HelpName = "dir", Description = "PEFT adapter folder, LoRA, DoRA or IA³ (adapter_config.json + adapter_model.safetensors)." };

    internal static Device ParseDevice(string name)
    {
        try
        {
            return Device.Parse(name);
        }
        catch (InvalidOperationException e)
        {
            throw new ArgumentException($"--device {name}: {e.Message}", e);
        }
    }

    internal static Option<string> DeviceOption() =>
        new("--device") { HelpName = "cpu|cuda", Description = "Where the model runs: cpu, or cuda (the first CUDA GPU; an error when there is none).", DefaultValueFactory = _ => "cpu" };

    private static LlamaForCausalLM LoadModel(string folder, string? adapter)
    {
        var lm = LlamaForCausalLM.Load(folder);
        if (adapter != null)
        {
            new PeftModel(lm).LoadAdapter(adapter);
        }

        return lm;
    }

    /// <summary>Refuses a model whose logits over <paramref name="tokens"/> hold a NaN or infinity, naming the first such row (token position).</summary>
    private static void CheckLogits(LlamaForCausalLM lm, int[] tokens, KernelOptions kernel)
    {
        float[] logits;
        using (Tape.NoGrad())
        {
            logits = lm.Forward(tokens, 1, null, new ForwardContext(0, kernel)).Data;
        }

        int vocab = lm.Config.VocabSize;
        for (int row = 0; row < tokens.Length; row++)
        {
            var span = logits.AsSpan(row * vocab, vocab);
            for (int j = 0; j < span.Length; j++)
            {
                if (!float.IsFinite(span[j]))
                {
                    throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                        $"the logits are not finite: row {row} (token position {row}, token id {tokens[row]}) has {span[j]} at vocabulary index {j}; the model or adapter weights hold NaN or infinite values."));
                }
            }
        }
    }

    private static int[] ParseTokens(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out ids[i]) || ids[i] < 0)
            {
                throw new ArgumentException($"{option}: '{parts[i]}' (item {i + 1}) is not a non-negative integer token id.");
            }
        }

        return ids;
    }
}
