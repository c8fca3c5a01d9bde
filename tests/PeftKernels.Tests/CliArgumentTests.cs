// Every numeric option of the `peft` verbs is checked before any work (issue 14): a bad value
// exits 1 with one line naming the option and the value given, and nothing of the verb's work
// (loading, training, benchmarking) happens. The model is a real tiny one, so on code without
// the checks each case reaches the work and fails there (or, worse, succeeds).
using System.CommandLine;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class CliArgumentTests : IDisposable
{
    private readonly TempFolder folder = new();

    public CliArgumentTests()
    {
        ModelFolder = folder.File("model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        DataFile = folder.File("data.txt");
        File.WriteAllText(DataFile, string.Concat(Enumerable.Repeat("abc abc abcd abc. ", 20)));
    }

    private string ModelFolder { get; }

    private string DataFile { get; }

    private string OutFolder => folder.File("out");

    [Theory]
    [InlineData("generate", "--threads", "-1")]
    [InlineData("generate", "--temperature", "NaN")]
    [InlineData("generate", "--temperature", "-1")]
    [InlineData("generate", "--temperature", "Infinity")]
    [InlineData("generate", "--temperature", "-Infinity")]
    [InlineData("generate", "--top-p", "0")]
    [InlineData("generate", "--top-p", "1.5")]
    [InlineData("generate", "--top-p", "NaN")]
    [InlineData("generate", "--max-new-tokens", "-3")]
    [InlineData("score", "--threads", "-1")]
    [InlineData("train", "--seq", "0")]
    [InlineData("train", "--seq", "-4")]
    [InlineData("train", "--steps", "0")]
    [InlineData("train", "--batch", "0")]
    [InlineData("train", "--grad-accum", "0")]
    [InlineData("train", "--warmup", "-1")]
    [InlineData("train", "--r", "0")]
    [InlineData("train", "--alpha", "NaN")]
    [InlineData("train", "--alpha", "Infinity")]
    [InlineData("train", "--dropout", "1")]
    [InlineData("train", "--dropout", "NaN")]
    [InlineData("train", "--lr", "NaN")]
    [InlineData("train", "--lr", "-1")]
    [InlineData("train", "--lora-plus-ratio", "Infinity")]
    [InlineData("train", "--threads", "-1")]
    [InlineData("pretrain", "--seq", "0")]
    [InlineData("pretrain", "--steps", "0")]
    [InlineData("pretrain", "--batch", "-2")]
    [InlineData("pretrain", "--lr", "NaN")]
    [InlineData("pretrain", "--threads", "-1")]
    [InlineData("demo", "--threads", "-1")]
    [InlineData("bench", "--threads", "-1")]
    public void ABadNumericOptionIsRefusedUpFrontNamingTheOptionAndTheValue(string verb, string option, string value)
    {
        var (code, output, error) = Invoke(Arguments(verb, option, value));
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.StartsWith($"error: {option} must be ", error);
        Assert.Contains($"; got {value}.", error);
        Assert.DoesNotContain("Parameter '", error);
        Assert.DoesNotContain("Actual value was", error);
        Assert.DoesNotContain("   at ", error);
        Assert.Single(error.Trim().Split('\n'));
        Assert.False(Directory.Exists(OutFolder));
    }

    [Theory]
    [InlineData("--temperature", "0")]
    [InlineData("--top-p", "1")]
    [InlineData("--max-new-tokens", "0")]
    [InlineData("--threads", "0")]
    public void TheEdgesOfTheSamplingRangesAreAccepted(string option, string value)
    {
        var (code, _, error) = Invoke(Arguments("generate", option, value));
        Assert.Equal((0, ""), (code, error));
    }

    [Fact]
    public void BenchThreadsZeroMeansAllProcessorsAsOnTheOtherVerbs()
    {
        Assert.Equal([Environment.ProcessorCount, 1], Cli.BenchCommand.ThreadCounts([0, 1]));
        Assert.Equal([.. new[] { 1, Environment.ProcessorCount }.Distinct()], Cli.BenchCommand.ThreadCounts([]));
    }

    public void Dispose() => folder.Dispose();

    /// <summary>A quick, otherwise valid command line of <paramref name="verb"/> with <paramref name="option"/> set to <paramref name="value"/>.</summary>
    private string[] Arguments(string verb, string option, string value)
    {
        var defaults = verb switch
        {
            "generate" => new Dictionary<string, string> { ["--model"] = ModelFolder, ["--prompt-tokens"] = "5,6,7", ["--max-new-tokens"] = "2", ["--threads"] = "1" },
            "score" => new() { ["--model"] = ModelFolder, ["--tokens"] = "5,6,7", ["--threads"] = "1" },
            "train" => new() { ["--model"] = ModelFolder, ["--data"] = DataFile, ["--steps"] = "1", ["--batch"] = "1", ["--seq"] = "4", ["--threads"] = "1", ["--out"] = OutFolder },
            "pretrain" => new() { ["--data"] = DataFile, ["--steps"] = "1", ["--batch"] = "1", ["--seq"] = "4", ["--threads"] = "1", ["--out"] = OutFolder },
            "demo" => new() { ["--fast"] = "", ["--threads"] = "1", ["--out"] = OutFolder },
            "bench" => new() { ["--quick"] = "" },
            _ => throw new ArgumentException(verb),
        };
        defaults[option] = value;
        return [verb, .. defaults.SelectMany(p => p.Value.Length == 0 ? new[] { p.Key } : [p.Key, p.Value])];
    }

    private static (int Code, string Output, string Error) Invoke(string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
