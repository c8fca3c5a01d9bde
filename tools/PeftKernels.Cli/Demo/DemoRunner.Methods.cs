// `peft demo --methods`: every PEFT method of the library on the same task, side by side.
//   1. pre-train the small base (as the full demo) and measure it on the sentiment task
//   2. per method (DemoMethods.All): attach a fresh adapter, train it on the sentiment task,
//      measure held-out accuracy, save it in the method's own file layout, detach it
//   3. a table: method, trainable parameters, file size on disk, accuracy, training time;
//      methods.json with the same rows in the output folder
// The base stays full precision and frozen; each method starts from the same weights.
using System.Diagnostics;
using PeftKernels.Models;
using Spectre.Console;

namespace PeftKernels.Cli.Demo;

/// <summary>One row of the method table.</summary>
internal sealed record DemoMethodMetrics(string Method, string Setting, long TrainableParameters, long AdapterBytes, double AccuracyBefore, double AccuracyAfter,
    double TrainSeconds, double FinalLoss);

internal sealed partial class DemoRunner
{
    /// <summary>Runs the method comparison; returns one row per method.</summary>
    public IReadOnlyList<DemoMethodMetrics> RunMethods(IReadOnlyList<DemoMethod>? methods = null)
    {
        methods ??= DemoMethods.All;
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(options.Output);
        var eval = DemoTask.Sentiment.Examples(options.Fast ? 48 : 96, options.Seed + 1000);

        Step(1, "Pre-train a small Llama on generated sentences (it learns the words, never the tasks)");
        var (model, _) = Pretrain();
        model.To(Device.Cpu);
        double before = DemoEval.Accuracy(eval, DemoEval.Answers((t, b) => model.Forward(t, b, null, Context), eval));
        console.MarkupLine($"   base: accuracy {before:P0} on {eval.Count} held-out sentiment prompts");
        model.To(device);

        var rows = new List<DemoMethodMetrics>();
        int step = 2;
        foreach (var method in methods)
        {
            Step(step++, $"{method.Name} ({method.Setting})");
            var adapter = method.Attach(model, options.Seed);
            try
            {
                double seconds = Train(model, method.Name, DemoTask.Sentiment, options.Fast ? method.FastSteps : method.Steps, method.LearningRate);
                double after = DemoEval.Accuracy(eval, DemoEval.Answers((t, b) => model.Forward(t, b, null, Context), eval));
                string folder = Path.Combine(options.Output, "methods", method.Name);
                adapter.Save(folder);
                long bytes = Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
                console.MarkupLine($"   {Markup.Escape(method.Name)}: accuracy {before:P0} → [green]{after:P0}[/], {adapter.TrainableParameters:N0} trainable parameters, {ModelCommands.Mib(bytes)} on disk → [grey]{Markup.Escape(folder)}[/]");
                rows.Add(new DemoMethodMetrics(method.Name, method.Setting, adapter.TrainableParameters, bytes, before, after, seconds, curves[method.Name][^1]));
            }
            finally
            {
                adapter.Detach();
            }
        }

        Step(step, "Summary");
        var table = new Table().Border(TableBorder.Rounded).AddColumns("method", "setting", "trainable params", "file size", "accuracy: base → adapter", "train time");
        foreach (var r in rows)
        {
            table.AddRow(r.Method, Markup.Escape(r.Setting), $"{r.TrainableParameters:N0}", ModelCommands.Mib(r.AdapterBytes), $"{r.AccuracyBefore:P0} → [green]{r.AccuracyAfter:P0}[/]", $"{r.TrainSeconds:F1} s");
        }

        console.Write(table);
        DemoOutputs.WriteMethodMetrics(Path.Combine(options.Output, "methods.json"), rows);
        console.MarkupLine($"   {rows.Count} methods on {Markup.Escape(device.Name)} in {total.Elapsed.TotalSeconds:F0} s; wrote [grey]methods.json[/] and [grey]methods/[/]");
        return rows;
    }
}
