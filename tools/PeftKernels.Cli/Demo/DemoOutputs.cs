// What the demo measures and writes: metrics.json (System.Text.Json, snake_case) and a
// loss-curve PNG (ScottPlot) with one line per training run.
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PeftKernels.Cli.Demo;

internal sealed record DemoTaskMetrics(string Task, string Method, long TrainableParameters, long AdapterBytes, double AccuracyBefore, double AccuracyAfter,
    double TrainSeconds, double FinalLoss);

internal sealed record DemoMergeMetrics(double MaxAbsLogitDifference, double MaxAbsLogit, bool SameAnswers);

internal sealed record DemoServingMetrics(int Rows, bool MatchesSeparate, double Seconds);

internal sealed record DemoMetrics
{
    /// <summary>Where the model ran: "cpu", or the accelerator's name.</summary>
    public required string Device { get; init; }

    public long BaseParameters { get; init; }

    public long BaseBytes { get; init; }

    public double PretrainSeconds { get; init; }

    public required IReadOnlyList<DemoTaskMetrics> Tasks { get; init; }

    public required DemoMergeMetrics Merge { get; init; }

    public required DemoServingMetrics Serving { get; init; }

    public double TotalSeconds { get; init; }
}

internal static class DemoOutputs
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static void WriteMetrics(string path, DemoMetrics metrics)
    {
        string temporary = path + ".tmp";
        File.WriteAllBytes(temporary, JsonSerializer.SerializeToUtf8Bytes(metrics, Json));
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>
    /// The demo prompts' chat template, written into the base folder's tokenizer_config.json so that `peft serve` answers
    /// /v1/chat/completions on the demo's output: the user messages, left-padded with spaces to the prompt width the
    /// adapters were trained on (DemoTask.PromptWidth), one after another; no roles, no generation prompt (the tasks have none).
    /// </summary>
    public static string ChatTemplate =>
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ ' ' * (" + DemoTask.PromptWidth + " - m['content'] | length) }}{{ m['content'] }}{% endif %}{% endfor %}";

    public static void WriteTokenizerConfig(string baseFolder)
    {
        var config = new Dictionary<string, string> { ["chat_template"] = ChatTemplate };
        PeftKernels.IO.AtomicFile.Write(Path.Combine(baseFolder, "tokenizer_config.json"), stream => JsonSerializer.Serialize(stream, config, Json));
    }

    public static void WriteMethodMetrics(string path, IReadOnlyList<DemoMethodMetrics> rows) =>
        PeftKernels.IO.AtomicFile.Write(path, stream => JsonSerializer.Serialize(stream, rows, Json));

    public static IReadOnlyList<DemoMethodMetrics> ReadMethodMetrics(string path) =>
        JsonSerializer.Deserialize<List<DemoMethodMetrics>>(File.ReadAllBytes(path), Json) ?? throw new InvalidDataException($"{path} holds no method rows.");

    public static DemoMetrics ReadMetrics(string path) =>
        JsonSerializer.Deserialize<DemoMetrics>(File.ReadAllBytes(path), Json) ?? throw new InvalidDataException($"{path} holds no metrics.");

    public static void WriteLossPlot(string path, IReadOnlyDictionary<string, List<double>> curves)
    {
        var plot = new ScottPlot.Plot();
        foreach (var (name, losses) in curves)
        {
            var line = plot.Add.Scatter(Enumerable.Range(1, losses.Count).Select(i => (double)i).ToArray(), losses.ToArray());
            line.LegendText = name;
            line.MarkerSize = 0;
        }

        plot.Title("peft demo: training loss");
        plot.XLabel("step");
        plot.YLabel("loss (nats per predicted byte)");
        plot.ShowLegend();
        string temporary = path + ".tmp.png";
        plot.SavePng(temporary, 900, 500);
        File.Move(temporary, path, overwrite: true);
    }
}
