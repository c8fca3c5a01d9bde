// `peft bench decode-error`: how far the integer 4-bit decode GEMV (`generate --integer-decode`)
// moves a model's logits from the bitsandbytes-exact fp32 path (DecodeAccuracy): teacher-forced max
// and mean logit error, greedy agreement per step, and the common prefix of the two free-running
// greedy generations. The model's projections are quantized to NF4 first when they are not 4-bit.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Engine;
using PeftKernels.Models;

namespace PeftKernels.Cli;

internal static class BenchDecodeErrorCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { HelpName = "dir", Description = "Hugging Face model folder (default: a random ~125M Llama, seed 1)." };
        var prompts = new Option<int>("--prompts") { Description = "Random prompts (seeded).", DefaultValueFactory = _ => 4 };
        var length = new Option<int>("--prompt-length") { Description = "Tokens per prompt.", DefaultValueFactory = _ => 8 };
        var tokens = new Option<int>("--tokens") { Description = "New tokens per prompt.", DefaultValueFactory = _ => 32 };
        var threads = OptionChecks.ThreadsOption();
        var command = new Command("decode-error", "Logit error and greedy agreement of the integer 4-bit decode path against the exact fp32 one.")
        {
            model, prompts, length, tokens, threads,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            int count = parse.AtLeast(prompts, 1), promptLength = parse.AtLeast(length, 1), newTokens = parse.AtLeast(tokens, 1);
            string? folder = parse.GetValue(model);
            var lm = folder != null ? LlamaForCausalLM.Load(folder) : LlamaForCausalLM.Create(LlamaConfig.Llama125M(), 1);
            lm.QuantizeLinears();
            var rng = new Random(5);
            var list = Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, promptLength).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray()).ToList();
            var r = DecodeAccuracy.Compare(lm, list, newTokens, parse.Threads(threads));
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{folder ?? "random ~125M Llama"} (NF4 projections): {r.Steps} decode steps; max |Δlogit| {r.MaxAbsError:G3} ({100 * r.MaxRelativeError:F2} % of the row's max |logit|), "
                + $"mean |Δlogit| {r.MeanAbsError:G3}; greedy agreement {100 * r.GreedyAgreement:F1} %; free-running common prefix {r.FreeRunningCommonPrefix:F1} of {r.Tokens} tokens"));
            return 0;
        }));
        return command;
    }
}
