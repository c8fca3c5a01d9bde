// `peft train --method prompt|p-tuning|prefix` (docs/formats/prompt-learning.md): the options of prompt tuning
// (--virtual-tokens, --prompt-init random|sample-vocab|text, --prompt-init-text), P-tuning (--encoder-hidden-size of the
// MLP) and prefix tuning (--prefix-projection, --encoder-hidden-size of the projection), the adapter set up on the loaded
// model (its base frozen) and the run, which saves PEFT's folder (prompt_embeddings, the encoder folded in).
// --r, --alpha, --dropout, --targets, --rslora and --lora-plus-ratio belong to the LoRA methods and are refused here.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;

namespace PeftKernels.Cli;

/// <summary>The prompt-learning options of <c>peft train</c> and the adapter they describe.</summary>
internal sealed class TrainPromptLearning
{
    /// <summary>The --method values handled here.</summary>
    public static readonly string[] Methods = ["prompt", "p-tuning", "prefix"];

    private readonly Option<int> virtualTokens = new("--virtual-tokens")
    {
        HelpName = "n",
        Description = "prompt / p-tuning / prefix: num_virtual_tokens, the virtual positions before every sequence.",
        DefaultValueFactory = _ => 20,
    };

    private readonly Option<string> promptInit = new("--prompt-init")
    {
        Description = "prompt: prompt_tuning_init: random (N(0, 1)), sample-vocab (rows of random vocabulary embeddings), text (the embeddings of --prompt-init-text).",
        DefaultValueFactory = _ => "random",
    };

    private readonly Option<string?> promptInitText = new("--prompt-init-text")
    {
        HelpName = "text",
        Description = "prompt with --prompt-init text: the text whose tokens (BOS first, cut or repeated to --virtual-tokens) start the prompt.",
    };

    private readonly Option<int?> encoderHidden = new("--encoder-hidden-size")
    {
        HelpName = "h",
        Description = "p-tuning: the MLP's width (H→h→h→H); prefix with --prefix-projection: the projection's width (default token_dim).",
    };

    private readonly Option<bool> prefixProjection = new("--prefix-projection")
    {
        Description = "prefix: train through Embedding → Linear → tanh → Linear (folded into prompt_embeddings on save).",
    };

    public TrainPromptLearning()
    {
        promptInit.AcceptOnlyFromAmong("random", "sample-vocab", "text");
    }

    /// <summary>The options, to add to <c>peft train</c>.</summary>
    public IEnumerable<Option> Options => [virtualTokens, promptInit, promptInitText, encoderHidden, prefixProjection];

    /// <summary>
    /// Checks the options of <paramref name="method"/> and records the ones that fix the run's numbers in <paramref name="args"/>; a prompt-learning
    /// option given with another method, or a LoRA option given with a prompt-learning method, is refused.
    /// </summary>
    public void Check(ParseResult parse, string method, IDictionary<string, string> args, params Option[] loraOnly)
    {
        bool mine = Methods.Contains(method);
        var given = Options.Where(o => parse.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
        if (!mine)
        {
            if (given.Count > 0)
            {
                throw new ArgumentException($"{string.Join(", ", given)} apply to --method prompt, p-tuning or prefix, not {method}.");
            }

            return;
        }

        var lora = loraOnly.Where(o => parse.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
        if (lora.Count > 0)
        {
            throw new ArgumentException($"{string.Join(", ", lora)} apply to the LoRA methods, not to --method {method}.");
        }

        int n = parse.AtLeast(virtualTokens, 1);
        string init = parse.GetValue(promptInit)!;
        string? text = parse.GetValue(promptInitText);
        if (method != "prompt" && (given.Contains("--prompt-init") || text != null))
        {
            throw new ArgumentException($"--prompt-init and --prompt-init-text apply to --method prompt, not {method}.");
        }

        if ((init == "text") != (text != null))
        {
            throw new ArgumentException(init == "text" ? "--prompt-init text needs --prompt-init-text." : "--prompt-init-text applies with --prompt-init text.");
        }

        if (text is "")
        {
            throw new ArgumentException("--prompt-init-text is empty.");
        }

        if (parse.GetValue(encoderHidden) is { } h && (h < 1 || method == "prompt" || (method == "prefix" && !parse.GetValue(prefixProjection))))
        {
            throw new ArgumentException(h < 1 ? $"--encoder-hidden-size must be >= 1; got {h}." : "--encoder-hidden-size applies to --method p-tuning, and to prefix with --prefix-projection.");
        }

        if (parse.GetValue(prefixProjection) && method != "prefix")
        {
            throw new ArgumentException($"--prefix-projection applies to --method prefix, not {method}.");
        }

        args["--virtual-tokens"] = n.ToString(CultureInfo.InvariantCulture);
        args["--prompt-init"] = init;
        args["--prompt-init-text"] = text ?? "";
        args["--encoder-hidden-size"] = parse.GetValue(encoderHidden)?.ToString(CultureInfo.InvariantCulture) ?? "";
        args["--prefix-projection"] = parse.GetValue(prefixProjection) ? "true" : "false";
    }

    /// <summary>The adapter of <paramref name="method"/> on <paramref name="model"/> (its base frozen).</summary>
    public PromptLearningAdapter Attach(ParseResult parse, string method, LlamaForCausalLM model, ITokenizer tokenizer, string baseModel, int seed)
    {
        var init = parse.GetValue(promptInit) switch
        {
            "sample-vocab" => PromptTuningInit.SampleVocab,
            "text" => PromptTuningInit.Text,
            _ => PromptTuningInit.Random,
        };
        string? text = parse.GetValue(promptInitText);
        var config = PromptLearningConfig.ForMethod(method) with
        {
            NumVirtualTokens = parse.GetValue(virtualTokens),
            PromptTuningInit = method == "prompt" ? init : PromptTuningInit.Random,
            PromptTuningInitText = method == "prompt" ? text : null,
            TokenizerNameOrPath = method == "prompt" && text != null ? baseModel : null,
            EncoderHiddenSize = parse.GetValue(encoderHidden),
            PrefixProjection = parse.GetValue(prefixProjection),
            BaseModelNameOrPath = baseModel,
        };
        return PromptLearningAdapter.Attach(model, config, seed, text == null ? null : InitTokens(tokenizer, text));
    }

    /// <summary>The tokens of the init text with BOS in front, as PEFT's tokenizer call gives them.</summary>
    internal static int[] InitTokens(ITokenizer tokenizer, string text)
    {
        var ids = tokenizer.Encode(text);
        return tokenizer.BosId is { } bos && (ids.Length == 0 || ids[0] != bos) ? [bos, .. ids] : ids;
    }
}
