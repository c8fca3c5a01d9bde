// `peft train --method mixlora`: MixLoRA's own options (--num-experts, --top-k, --aux-loss-coef,
// --jitter; --r, --alpha, --dropout, --rslora and --targets are the shared LoRA options) and its
// setup: the adapter attached to the loaded model, trained by the shared Trainer (the router's
// load-balancing loss is part of the model's training loss), saved as a MixLoRA folder
// (docs/formats/mixlora.md).
using System.CommandLine;
using System.Globalization;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

/// <summary>The MixLoRA options of <c>peft train</c> and the adapter they build.</summary>
internal sealed class TrainMixLora
{
    private readonly Option<int> experts = new("--num-experts") { Description = "mixlora: number of LoRA experts per MLP (num_experts).", DefaultValueFactory = _ => 8 };
    private readonly Option<int> topK = new("--top-k") { Description = "mixlora: experts per token (top_k, renormalised).", DefaultValueFactory = _ => 2 };
    private readonly Option<double> auxLoss = new("--aux-loss-coef")
    {
        HelpName = "coef",
        Description = "mixlora: weight of the router's load-balancing loss coef·E·Σ f·P (router_aux_loss_coef).",
        DefaultValueFactory = _ => 0.001,
    };

    private readonly Option<double> jitter = new("--jitter")
    {
        HelpName = "j",
        Description = "mixlora: in training, multiply the MLP input by U(1 − j, 1 + j) noise (jitter_noise; 0 = off).",
        DefaultValueFactory = _ => 0,
    };

    /// <summary>The options to add to the command.</summary>
    public IEnumerable<Option> Options => [experts, topK, auxLoss, jitter];

    /// <summary>The run's arguments (for the resume check) of the MixLoRA options.</summary>
    public void AddArgs(ParseResult parse, Dictionary<string, string> args)
    {
        args["--num-experts"] = parse.GetValue(experts).ToString(CultureInfo.InvariantCulture);
        args["--top-k"] = parse.GetValue(topK).ToString(CultureInfo.InvariantCulture);
        args["--aux-loss-coef"] = TrainingRun.Arg(parse.GetValue(auxLoss));
        args["--jitter"] = TrainingRun.Arg(parse.GetValue(jitter));
    }

    /// <summary>Refuses MixLoRA options given to another method (before any work).</summary>
    public void CheckUnused(ParseResult parse, string method)
    {
        var given = Options.Where(o => parse.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
        if (given.Count > 0)
        {
            throw new ArgumentException($"{string.Join(", ", given)} apply to --method mixlora, not to {method}.");
        }
    }

    /// <summary>The config from the options (checked: experts ≥ 1, 1 ≤ top-k ≤ experts, coef ≥ 0, jitter in [0, 1)).</summary>
    public MixLoraConfig Config(ParseResult parse, int rank, double alpha, double dropout, bool rsLora, string? targets, string baseModel)
    {
        int e = parse.AtLeast(experts, 1), k = parse.AtLeast(topK, 1);
        if (k > e)
        {
            throw new ArgumentException($"--top-k must be at most --num-experts ({e}); got {k}.");
        }

        var config = new MixLoraConfig
        {
            NumExperts = e,
            TopK = k,
            R = rank,
            LoraAlpha = alpha,
            LoraDropout = dropout,
            UseRsLora = rsLora,
            RouterAuxLossCoef = parse.InRange(auxLoss, 0, double.MaxValue),
            JitterNoise = parse.InRange(jitter, 0, 1, maxOpen: true),
            TargetModules = targets == null ? MixLoraConfig.KnownModules : [.. targets.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)],
            BaseModelNameOrPath = baseModel,
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new ArgumentException($"--method mixlora: {ex.Message}", ex);
        }

        return config;
    }

    /// <summary>Attaches the adapter and reports the trainable parameters.</summary>
    public static MixLoraAdapter Attach(LlamaForCausalLM model, MixLoraConfig config, int seed, TextWriter log)
    {
        var adapter = MixLoraAdapter.Attach(model, config, seed);
        var all = model.NamedParameters().Select(p => p.Parameter).ToList();
        var count = new TrainableParameterCount(all.Where(p => p.Trainable).Sum(p => p.Count), all.Sum(p => p.Count));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{count} (MixLoRA: {config.NumExperts} experts, top-{config.TopK}, {adapter.Blocks.Count} layers, {adapter.AttentionAdapters.Count} attention LoRA)"));
        return adapter;
    }
}
