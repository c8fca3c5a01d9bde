// `peft score`: the causal-LM loss of a token sequence over a Hugging Face model folder
// (LlamaForCausalLM), with an optional PEFT adapter folder, prints {"tokens": N, "loss": L,
// "perplexity": P} (mean loss over N−1 predictions); and the helpers it shares with `peft generate`
// (GenerateCommand.cs) and `peft train` (TrainCommand.cs): model, adapter and device options, model
// loading with non-finite warnings, the non-finite logits check and token id lists.
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
        var compute = ComputeOption.Create();
        var command = new Command("score", "Causal-LM loss and perplexity of a token sequence (mean over the N−1 predicted positions), as one JSON line.")
        {
            model, adapter, tokens, threads, device, compute,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var ids = ParseTokens(parse.GetRequiredValue(tokens), "--tokens");
            var kernel = new KernelOptions(parse.Threads(threads)) { Compute = parse.Compute(compute, device) };
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

    internal static string Mib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:F2} MiB");

    internal static Option<string> ModelOption() =>
        new("--model") { Required = true, HelpName = "dir", Description = "Hugging Face model folder (config.json + model.safetensors or a sharded index)." };

    internal static Option<string?> AdapterOption() =>
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
    internal static (LlamaForCausalLM Model, List<NonFiniteTensor> NonFinite) LoadModel(ParseResult parse, string folder, string? adapter)
    {
        var lm = LlamaForCausalLM.Load(folder);
        var nonFinite = lm.NonFiniteTensors.ToList();
        if (adapter != null && ModelAdapterFolders.Recognizes(adapter))
        {
            ModelAdapterFolders.Load(lm, adapter);
        }
        else if (adapter != null)
        {
            var peft = new PeftModel(lm);
            peft.LoadAdapter(adapter);
            nonFinite.AddRange(peft.NonFiniteTensors());
        }

        LoadWarnings.Print(parse, nonFinite);
        return (lm, nonFinite);
    }

    /// <summary>What the error of non-finite logits says about the weights: the first non-finite tensor, or that all are finite.</summary>
    internal static string Cause(IReadOnlyList<NonFiniteTensor> nonFinite) => nonFinite.Count == 0
        ? "every weight is finite, so an intermediate value overflowed"
        : string.Create(CultureInfo.InvariantCulture,
            $"the weights hold NaN or infinite values: {nonFinite[0]}{(nonFinite.Count > 1 ? $" (and {nonFinite.Count - 1} more tensor(s))" : "")}");

    /// <summary>
    /// Refuses a model whose logits over <paramref name="tokens"/> hold a NaN or infinity, naming the first such row (token
    /// position) and the first non-finite weight tensor of the load, if any.
    /// </summary>
    internal static void CheckLogits(LlamaForCausalLM lm, int[] tokens, KernelOptions kernel, IReadOnlyList<NonFiniteTensor> nonFinite)
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

    internal static int[] ParseTokens(string text, string option)
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
