// The individual steps of the demo: training with a live progress bar (or plain lines when the
// output is not a terminal), evaluation with sample predictions, the merge check and the
// mixed-batch serving check. On a GPU device the merge and unmerge run on the host copies and
// PeftModel re-uploads what changed.
using System.Diagnostics;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;
using PeftKernels.Training;
using Spectre.Console;

namespace PeftKernels.Cli.Demo;

internal sealed partial class DemoRunner
{
    private (LlamaForCausalLM Model, double Seconds) Pretrain()
    {
        var clock = Stopwatch.StartNew();
        var dataset = new TextDataset(new ByteTokenizer().Encode(DemoTask.Corpus(options.Fast ? 1500 : 4000, options.Seed)));
        var config = options.Fast ? LlamaConfig.Tiny(256) : LlamaConfig.Small(256);
        var model = LlamaForCausalLM.Create(config, options.Seed);
        foreach (var (_, p) in model.NamedParameters())
        {
            p.Trainable = true;
        }

        int steps = options.Fast ? 150 : 400;
        model.To(device);
        var trainer = new Trainer(model, rng => dataset.Batch(16, 64, rng), 16, new TrainerOptions
        {
            Steps = steps,
            LearningRate = 3e-3,
            WarmupSteps = steps / 10,
            MinLearningRateRatio = 0.1,
            WeightDecay = 0.01,
            Seed = options.Seed,
            Kernel = kernel,
        });
        Run(trainer, "pretrain");
        model.Freeze();
        console.MarkupLine($"   {steps} steps on {Markup.Escape(device.Name)}, final loss {curves["pretrain"][^1]:F3} (bytes, ln 256 = 5.545 at chance), {clock.Elapsed.TotalSeconds:F1} s");
        return (model, clock.Elapsed.TotalSeconds);
    }

    private double Train(LlamaForCausalLM model, string name, DemoTask task, int steps, double learningRate = 4e-3)
    {
        var clock = Stopwatch.StartNew();
        var trainer = new Trainer(model, rng => task.Batch(rng, 16), 16, new TrainerOptions
        {
            Steps = steps,
            LearningRate = learningRate,
            WarmupSteps = steps / 10,
            Seed = options.Seed + name.Length,
            Kernel = kernel,
        });
        Run(trainer, name);
        console.MarkupLine($"   {steps} steps of 16 examples, final loss {curves[name][^1]:F3}, {clock.Elapsed.TotalSeconds:F1} s");
        return clock.Elapsed.TotalSeconds;
    }

    private void Run(Trainer trainer, string name)
    {
        var losses = curves[name] = [];
        TrainingView.Run(trainer, console, live, name, lines: 4, indent: "   ", p => losses.Add(p.Loss));
    }

    private double Evaluate(string who, Func<int[], int, Tensor> forward, List<DemoExample> examples, int show)
    {
        var answers = DemoEval.Answers(forward, examples);
        double accuracy = DemoEval.Accuracy(examples, answers);
        var table = new Table().Border(TableBorder.Rounded).AddColumns("prompt", "expected", $"{who} says");
        for (int i = 0; i < show; i++)
        {
            table.AddRow(Markup.Escape(examples[i].Prompt.Trim()), examples[i].Label, Markup.Escape(answers[i].Length == 0 ? "(nothing)" : answers[i]));
        }

        console.Write(table);
        console.MarkupLine($"   {who}: accuracy {accuracy:P0} on {examples.Count} held-out examples");
        return accuracy;
    }

    private DemoMergeMetrics CheckMerge(PeftModel peft, LlamaForCausalLM model, List<DemoExample> examples)
    {
        var rows = examples.Take(16).ToList();
        int[] tokens = [.. rows.SelectMany(e => e.PaddedPrompt.Select(c => (int)c))];
        float[] unmerged, merged;
        using (Tape.NoGrad())
        {
            unmerged = model.Forward(tokens, rows.Count, null, Context).Data;
            var report = peft.Merge(safe: true);
            merged = model.Forward(tokens, rows.Count, null, Context).Data;
            console.MarkupLine($"   merged {report.Modules.Count} modules into a 4-bit base: the merged weights are dequantized NF4 + s·B·A in fp32");
        }

        double maxDiff = 0, maxLogit = 0;
        for (int i = 0; i < merged.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(merged[i] - unmerged[i]));
            maxLogit = Math.Max(maxLogit, Math.Abs(unmerged[i]));
        }

        var mergedAnswers = DemoEval.Answers((t, b) => model.Forward(t, b, null, Context), rows);
        peft.Unmerge();
        var unmergedAnswers = DemoEval.Answers((t, b) => model.Forward(t, b, null, Context), rows);
        bool same = mergedAnswers.SequenceEqual(unmergedAnswers);
        console.MarkupLine($"   max |logit difference| merged vs adapter: {maxDiff:E2} (logits up to {maxLogit:F1}); same answers on {rows.Count} prompts: {(same ? "[green]yes[/]" : "[red]no[/]")}; unmerged again");
        return new DemoMergeMetrics(maxDiff, maxLogit, same);
    }

    private DemoServingMetrics ServeMixedBatch(PeftModel peft, List<DemoExample> sentiment, List<DemoExample> topic)
    {
        var rows = new List<DemoExample>();
        var names = new List<string>();
        for (int i = 0; i < 6; i++)
        {
            rows.Add(sentiment[i]);
            names.Add("sentiment");
            rows.Add(topic[i]);
            names.Add("topic");
        }

        rows.Add(sentiment[6]);
        names.Add(Nn.ForwardContext.BaseAdapterName);
        var clock = Stopwatch.StartNew();
        var mixed = DemoEval.Answers((t, b) => peft.Forward(t, b, names, Context), rows);
        double seconds = clock.Elapsed.TotalSeconds;
        var separate = new string[rows.Count];
        foreach (string adapter in names.Distinct())
        {
            var idx = Enumerable.Range(0, rows.Count).Where(i => names[i] == adapter).ToList();
            var answers = DemoEval.Answers((t, b) => peft.Forward(t, b, [.. Enumerable.Repeat(adapter, b)], Context), [.. idx.Select(i => rows[i])]);
            for (int k = 0; k < idx.Count; k++)
            {
                separate[idx[k]] = answers[k];
            }
        }

        var table = new Table().Border(TableBorder.Rounded).AddColumns("row", "adapter", "prompt", "expected", "answer");
        for (int i = 0; i < rows.Count; i++)
        {
            table.AddRow($"{i}", names[i], Markup.Escape(rows[i].Prompt.Trim()), rows[i].Label, Markup.Escape(mixed[i].Length == 0 ? "(nothing)" : mixed[i]));
        }

        console.Write(table);
        bool matches = mixed.SequenceEqual(separate);
        console.MarkupLine($"   {rows.Count} rows, 3 adapters choices in one batch, {seconds * 1000:F0} ms; identical to serving each adapter separately: {(matches ? "[green]yes[/]" : "[red]no[/]")}");
        return new DemoServingMetrics(rows.Count, matches, seconds);
    }

    private void Summary(DemoMetrics m)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumns("task", "method", "trainable params", "adapter size", "accuracy: base → adapter", "train time");
        foreach (var t in m.Tasks)
        {
            table.AddRow(t.Task, t.Method, $"{t.TrainableParameters:N0}", ModelCommands.Mib(t.AdapterBytes), $"{t.AccuracyBefore:P0} → [green]{t.AccuracyAfter:P0}[/]", $"{t.TrainSeconds:F1} s");
        }

        console.Write(table);
        console.MarkupLine($"   device {Markup.Escape(m.Device)}; base: {m.BaseParameters:N0} parameters ({ModelCommands.Mib(m.BaseBytes)}), pre-trained in {m.PretrainSeconds:F1} s; merge check max |Δlogit| {m.Merge.MaxAbsLogitDifference:E1}; mixed batch matches separate serving: {m.Serving.MatchesSeparate}");
    }

}
