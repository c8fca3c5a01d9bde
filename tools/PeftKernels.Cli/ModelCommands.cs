// `peft score` and `peft generate`: the causal-LM verbs over a Hugging Face model folder
// (LlamaForCausalLM), with an optional PEFT adapter folder, and the options they share with
// `peft train` (TrainCommand.cs).
//   score    prints {"tokens": N, "loss": L, "perplexity": P}: mean loss over N−1 predictions
//   generate greedy or temperature/top-p sampling with a KV cache
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.IO;
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
            var (lm, nonFinite) = LoadModel(parse, parse.GetRequiredValue(model), parse.GetValue(adapter));
            lm.To(on);
            double loss = lm.Score(ids, new ForwardContext(0, kernel));
            CheckLogits(lm, ids[..^1], kernel, nonFinite);
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
            var (lm, nonFinite) = LoadModel(parse, folder, parse.GetValue(adapter));
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
            CheckLogits(lm, ids, kernel, nonFinite);
            int[] generated;
            try
            {
                generated = lm.Generate(ids, newTokens, options, new ForwardContext(0, kernel));
            }
            catch (InvalidDataException e)
            {
                throw new InvalidDataException($"{e.Message}; {Cause(nonFinite)}.", e);
            }

            log.WriteLine(text != null ? text + tokenizer.Decode(generated) : string.Join(",", generated));
            return 0;
        }));
        return command;
    }

    internal static string Mib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:F2} MiB");

    internal static Option<string> ModelOption() =>
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

    /// <summary>The model (and adapter), with the non-finite tensors of both printed as warnings and returned.</summary>
    private static (LlamaForCausalLM Model, List<NonFiniteTensor> NonFinite) LoadModel(ParseResult parse, string folder, string? adapter)
    {
        var lm = LlamaForCausalLM.Load(folder);
        var nonFinite = lm.NonFiniteTensors.ToList();
        if (adapter != null)
        {
            var peft = new PeftModel(lm);
            peft.LoadAdapter(adapter);
            nonFinite.AddRange(peft.NonFiniteTensors());
        }

        LoadWarnings.Print(parse, nonFinite);
        return (lm, nonFinite);
    }

    /// <summary>What the error of non-finite logits says about the weights: the first non-finite tensor, or that all are finite.</summary>
    private static string Cause(IReadOnlyList<NonFiniteTensor> nonFinite) => nonFinite.Count == 0
        ? "every weight is finite, so an intermediate value overflowed"
        : string.Create(CultureInfo.InvariantCulture,
            $"the weights hold NaN or infinite values: {nonFinite[0]}{(nonFinite.Count > 1 ? $" (and {nonFinite.Count - 1} more tensor(s))" : "")}");

    /// <summary>
    /// Refuses a model whose logits over <paramref name="tokens"/> hold a NaN or infinity, naming the first such row (token
    /// position) and the first non-finite weight tensor of the load, if any.
    /// </summary>
    private static void CheckLogits(LlamaForCausalLM lm, int[] tokens, KernelOptions kernel, IReadOnlyList<NonFiniteTensor> nonFinite)
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
            int j = LlamaForCausalLM.FirstNonFinite(span);
            if (j >= 0)
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"the logits are not finite: row {row} (token position {row}, token id {tokens[row]}) has {span[j]} at vocabulary index {j}; {Cause(nonFinite)}."));
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
