// `peft train --method xlora`: X-LoRA (docs/formats/xlora.md) over existing PEFT LoRA folders given with --experts (they
// become the frozen experts "0", "1", … in that order); only the classifier trains. Its options: --top-k-lora, --softmax-temperature,
// --layerwise, --xlora-depth, --xlora-size, --xlora-dropout, --global-scaling-weight. The saved folder is PEFT's X-LoRA layout
// (the classifier at the root, the experts in 0/, 1/, …). It trains on --device (the X-LoRA ops have GPU kernels).
using System.CommandLine;
using System.Globalization;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Cli;

/// <summary>The X-LoRA options of <c>peft train</c> and the run they set up.</summary>
internal sealed class TrainXLora
{
    private readonly Option<string?> experts = new("--experts")
    {
        HelpName = "dirs",
        Description = "xlora: comma-separated PEFT LoRA folders, the frozen experts \"0\", \"1\", … in that order.",
    };

    private readonly Option<int> topK = new("--top-k-lora") { Description = "xlora: keep the k largest expert scalings per token (0 = all, dense).", DefaultValueFactory = _ => 0 };
    private readonly Option<double> temperature = new("--softmax-temperature") { Description = "xlora: temperature of the softmax over the experts.", DefaultValueFactory = _ => 1 };
    private readonly Option<bool> layerwise = new("--layerwise") { Description = "xlora: one set of scalings per LoRA module (layerwise_scalings)." };
    private readonly Option<int> depth = new("--xlora-depth") { Description = "xlora: classifier depth (1 = one Linear; d > 1 adds d − 1 hidden ReLU layers).", DefaultValueFactory = _ => 1 };
    private readonly Option<int> size = new("--xlora-size") { Description = "xlora: the classifier's hidden width (depth > 1).", DefaultValueFactory = _ => 2048 };
    private readonly Option<double> dropout = new("--xlora-dropout") { Description = "xlora: dropout after each hidden ReLU of the classifier while training.", DefaultValueFactory = _ => 0.2 };
    private readonly Option<double> globalWeight = new("--global-scaling-weight") { Description = "xlora: multiplies every expert branch.", DefaultValueFactory = _ => 1 };

    /// <summary>The options, to add to <c>peft train</c>.</summary>
    public IEnumerable<Option> Options => [experts, topK, temperature, layerwise, depth, size, dropout, globalWeight];

    /// <summary>
    /// Checks the X-LoRA options against <paramref name="method"/> (they belong to xlora, which needs --experts) and adds the ones
    /// that fix the run's numbers to <paramref name="args"/>.
    /// </summary>
    public void Check(ParseResult parse, string method, Dictionary<string, string> args)
    {
        bool given = Options.Any(o => parse.GetResult(o) is { Implicit: false });
        if (method != "xlora")
        {
            if (given)
            {
                throw new ArgumentException($"--experts, --top-k-lora, --softmax-temperature, --layerwise and the --xlora-* options apply to --method xlora, not to {method}.");
            }

            return;
        }

        var folders = Folders(parse);
        parse.AtLeast(topK, 0);
        parse.AtLeast(depth, 1);
        parse.AtLeast(size, 1);
        parse.InRange(dropout, 0, 1, maxOpen: true);
        parse.InRange(temperature, 0, double.MaxValue, minOpen: true);
        if (parse.GetValue(topK) > folders.Count)
        {
            throw new ArgumentException($"--top-k-lora must be at most the number of --experts ({folders.Count}); got {parse.GetValue(topK)}.");
        }

        args["--experts"] = string.Join(",", folders.Select(Path.GetFullPath));
        args["--top-k-lora"] = parse.GetValue(topK).ToString(CultureInfo.InvariantCulture);
        args["--softmax-temperature"] = TrainingRun.Arg(parse.GetValue(temperature));
        args["--layerwise"] = parse.GetValue(layerwise) ? "true" : "false";
        args["--xlora-depth"] = parse.GetValue(depth).ToString(CultureInfo.InvariantCulture);
        args["--xlora-size"] = parse.GetValue(size).ToString(CultureInfo.InvariantCulture);
        args["--xlora-dropout"] = TrainingRun.Arg(parse.GetValue(dropout));
        args["--global-scaling-weight"] = TrainingRun.Arg(parse.GetValue(globalWeight));
    }

    /// <summary>Attaches X-LoRA to <paramref name="lm"/>, trains the classifier and saves the folder; returns the exit code.</summary>
    public int Train(ParseResult parse, TextWriter log, LlamaForCausalLM lm, TextDataset dataset, int batch, int seq, TrainingRun run,
        TrainerOptions options, Device on, string baseModel)
    {
        int? k = parse.GetValue(topK) is > 0 and var value ? value : null;
        var config = new XLoraConfig
        {
            TopKLora = k,
            SoftmaxTemperature = parse.GetValue(temperature),
            LayerwiseScalings = parse.GetValue(layerwise),
            XLoraDepth = parse.GetValue(depth),
            XLoraSize = parse.GetValue(size),
            XLoraDropoutP = parse.GetValue(dropout),
            GlobalScalingWeight = parse.GetValue(globalWeight),
            BaseModelNameOrPath = baseModel,
        };
        var xlora = XLoraModel.Attach(lm, config, Folders(parse), options.Seed);
        lm.To(on);
        long trainable = xlora.Parameters.Sum(p => p.Count), total = lm.NamedParameters().Sum(p => p.Parameter.Count);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"X-LoRA: {xlora.Config.Experts} experts over {xlora.LoraModules.Count} LoRA modules; trainable params: {trainable:N0} || all params: {total:N0} ({dataset.Tokens.Length:N0} data tokens)"));
        var trainer = new Trainer(lm, rng => dataset.Batch(batch, seq, rng), batch, options);
        run.Run(trainer, log, xlora.Save);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"saved X-LoRA to {run.OutFolder} ({ModelCommands.Mib(new FileInfo(Path.Combine(run.OutFolder, Lora.WeightsFile)).Length)} classifier); final loss {trainer.LastFiniteLoss:F4}{TrainingRun.Skipped(trainer)}"));
        return 0;
    }

    private List<string> Folders(ParseResult parse)
    {
        string list = parse.GetValue(experts) ?? throw new ArgumentException("--method xlora needs --experts DIR,DIR,… (PEFT LoRA folders, the frozen experts).");
        var folders = list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList();
        if (folders.Count == 0)
        {
            throw new ArgumentException("--experts names no folder; give PEFT LoRA folders separated by commas.");
        }

        foreach (string folder in folders.Where(f => !File.Exists(Path.Combine(f, Lora.ConfigFile))))
        {
            throw new ArgumentException($"--experts: {folder} is not a PEFT adapter folder (it has no {Lora.ConfigFile}).");
        }

        return folders;
    }
}
