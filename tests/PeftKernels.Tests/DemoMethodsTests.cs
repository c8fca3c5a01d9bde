using System.CommandLine;
using PeftKernels.Cli.Demo;

namespace PeftKernels.Tests;

/// <summary>`peft demo --methods`: every method trains on the sentiment task, beats the base by 30 points and is saved.</summary>
public sealed class DemoMethodsTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void EveryMethodBeatsTheBaseBy30PointsAndIsSavedAndTabled()
    {
        string output = Path.Combine(folder.Path, "methods-demo");
        var writer = new StringWriter { NewLine = "\n" };
        var error = new StringWriter();
        int code = Cli.Cli.Build().Parse(["demo", "--methods", "--fast", "--out", output]).Invoke(new InvocationConfiguration { Output = writer, Error = error });
        Assert.Equal((0, ""), (code, error.ToString()));

        var rows = DemoOutputs.ReadMethodMetrics(Path.Combine(output, "methods.json"));
        Assert.Equal(DemoMethods.All.Select(m => m.Name), rows.Select(r => r.Method));
        Assert.Equal(["lora", "dora", "ia3", "prompt", "p-tuning", "prefix", "bottleneck", "xlora", "mixlora"], rows.Select(r => r.Method));
        string log = writer.ToString();
        foreach (var r in rows)
        {
            // Stated margin of the issue: each method answers at least 30 points more held-out prompts correctly than the base.
            Assert.True(r.AccuracyAfter >= r.AccuracyBefore + 0.30, $"{r.Method}: accuracy {r.AccuracyBefore:P0} → {r.AccuracyAfter:P0}");
            Assert.True(r.TrainableParameters > 0 && double.IsFinite(r.FinalLoss), r.Method);
            string saved = Path.Combine(output, "methods", r.Method);
            Assert.Equal(r.AdapterBytes, Directory.EnumerateFiles(saved, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length));
            Assert.Contains($"{r.Method}: accuracy", log);
        }

        Assert.Contains("trainable params", log);
        Assert.Contains($"{rows.Count} methods on cpu", log);
    }
}
