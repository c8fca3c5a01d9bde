// `peft train --method bottleneck`: a bottleneck adapter (AdapterHub layout; docs/formats/bottleneck-adapters.md)
// over the frozen model. --bottleneck-config picks the variant (houlsby: after attention and after the
// MLP, swish; pfeiffer: after the MLP, relu; parallel: beside the MLP, relu, scaling 4); the other
// options override the preset. --adapter-init defaults to mam_adapter (W_up = 0: the adapter starts as
// the identity, the model as the base). The LoRA options (--r, --alpha, --dropout, --targets,
// --rslora, --lora-plus-ratio) do not apply and are refused when given.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Peft.Bottleneck;

namespace PeftKernels.Cli;

/// <summary>The options and the setup of <c>peft train --method bottleneck</c>.</summary>
internal sealed class TrainBottleneck
{
    private readonly Option<string> variant = new("--bottleneck-config")
    {
        Description = "Bottleneck variant (--method bottleneck): houlsby (after attention and MLP, swish), pfeiffer (after the MLP, relu) or parallel (beside the MLP, relu, scaling 4).",
        DefaultValueFactory = _ => "houlsby",
    };

    private readonly Option<double?> reduction = new("--reduction-factor") { HelpName = "f", Description = "Bottleneck width m = hidden / f (default: the variant's, 16 or 2)." };

    private readonly Option<string?> nonLinearity = new("--non-linearity") { HelpName = "name", Description = "relu, swish (= silu) or tanh (default: the variant's)." };

    private readonly Option<string?> scaling = new("--scaling") { HelpName = "s", Description = "A number, learned (one trained scalar) or channel (one trained factor per hidden channel); default: the variant's." };

    private readonly Option<string> init = new("--adapter-init")
    {
        Description = "mam_adapter (W_up = 0: identity start), bert (N(0, 0.02)) or houlsby (truncated N(0, 0.01)).",
        DefaultValueFactory = _ => "mam_adapter",
    };

    public TrainBottleneck()
    {
        variant.AcceptOnlyFromAmong("houlsby", "pfeiffer", "parallel");
        nonLinearity.AcceptOnlyFromAmong("relu", "swish", "silu", "tanh");
        init.AcceptOnlyFromAmong("mam_adapter", "bert", "houlsby");
    }

    /// <summary>The options, to add to <c>peft train</c>.</summary>
    public IEnumerable<Option> Options => [variant, reduction, nonLinearity, scaling, init];

    /// <summary>Refuses bottleneck options with another method, and the LoRA options <paramref name="loraOnly"/> with this one.</summary>
    public void CheckOptions(ParseResult parse, string method, params Option[] loraOnly)
    {
        var given = method == "bottleneck" ? loraOnly : Options;
        if (given.FirstOrDefault(o => parse.GetResult(o) is { Implicit: false }) is { } option)
        {
            throw new ArgumentException(method == "bottleneck"
                ? $"{option.Name} is a LoRA option; it does not apply to --method bottleneck."
                : $"{option.Name} applies to --method bottleneck only, not to --method {method}.");
        }
    }

    /// <summary>The adapter config the options describe.</summary>
    public BottleneckConfig Config(ParseResult parse)
    {
        var config = BottleneckConfig.Preset(parse.GetValue(variant)!) with { InitWeights = parse.GetValue(init)! };
        if (parse.GetValue(reduction) is { } f)
        {
            config = !(f > 0) || !double.IsFinite(f)
                ? throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--reduction-factor must be a positive number; got {f}."))
                : config with { ReductionFactor = f };
        }

        if (parse.GetValue(nonLinearity) is { } name)
        {
            config = config with { NonLinearity = name };
        }

        if (parse.GetValue(scaling) is { } s)
        {
            config = s switch
            {
                "learned" => config with { ScalingKind = BottleneckScalingKind.Learned },
                "channel" => config with { ScalingKind = BottleneckScalingKind.Channel },
                _ when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) =>
                    config with { ScalingKind = BottleneckScalingKind.Constant, Scaling = v },
                _ => throw new ArgumentException($"--scaling must be a number, learned or channel; got '{s}'."),
            };
        }

        config.Validate();
        return config;
    }

    /// <summary>The options that fix the run's numbers (for --resume).</summary>
    public void AddArgs(ParseResult parse, IDictionary<string, string> args)
    {
        var config = Config(parse);
        args["--bottleneck-config"] = parse.GetValue(variant)!;
        args["--reduction-factor"] = TrainingRun.Arg(config.ReductionFactor);
        args["--non-linearity"] = config.NonLinearity;
        args["--scaling"] = config.ScalingKind == BottleneckScalingKind.Constant ? TrainingRun.Arg(config.Scaling) : config.ScalingKind.ToString().ToLowerInvariant();
        args["--adapter-init"] = config.InitWeights;
    }

    /// <summary>Attaches the adapter, trains it and saves it into --out (AdapterHub layout); returns the exit code.</summary>
    public int Train(Models.LlamaForCausalLM lm, BottleneckConfig config, int seed, Device on, Func<Training.Trainer> trainerFactory, TrainingRun run, TextWriter log, int dataTokens)
    {
        var set = BottleneckAdapters.Attach(lm, config, seed);
        long parameters = set.Parameters.Sum(p => p.Count);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bottleneck adapter ({(config.MhAdapter ? "attention + " : "")}output sites, m = {config.Width(lm.Config.HiddenSize)}, {config.NonLinearity}, init {config.InitWeights}): {parameters:N0} trainable parameters ({dataTokens:N0} data tokens)"));
        lm.To(on);
        var trainer = trainerFactory();
        run.Run(trainer, log, set.Save);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"saved adapter to {run.OutFolder} ({ModelCommands.Mib(new FileInfo(Path.Combine(run.OutFolder, BottleneckAdapters.WeightsFileName)).Length)}); final loss {trainer.LastFiniteLoss:F4}{TrainingRun.Skipped(trainer)}"));
        return 0;
    }
}
