using System.CommandLine;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The data-parallel options of `peft pretrain` / `peft train`, in process (one rank; the MPI launch is MpiTrainingTests).</summary>
public sealed class DistributedCliTests : IDisposable
{
    private readonly TempFolder folder = new();

    private string Data()
    {
        string data = Path.Combine(folder.Path, "data.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("a small text to train on, and more of it. ", 40)));
        return data;
    }

    [Theory]
    [InlineData("--data-shards", "0", "--data-shards must be at least 1; got 0")]
    [InlineData("--data-shards", "3", "--batch 4 (the global batch) must be a multiple of the 3 data-parallel shards")]
    [InlineData("--comm-timeout", "0", "--comm-timeout must be a positive number of seconds; got 0")]
    public void BadDataParallelOptionsAreRefusedBeforeAnyWork(string option, string value, string message)
    {
        string data = Data();
        string[] shards = option == "--comm-timeout" ? ["--data-shards", "2"] : [];
        var (code, _, error) = Invoke(["pretrain", "--data", data, "--steps", "1", "--batch", "4", "--seq", "16", "--out", Path.Combine(folder.Path, "m"), option, value, .. shards]);
        Assert.Equal(1, code);
        Assert.Contains(message, error);
        Assert.False(Directory.Exists(Path.Combine(folder.Path, "m")));
    }

    [Fact]
    public void AShardedRunResumesOnlyWithTheSameShardsAndThenGivesTheUninterruptedBytes()
    {
        string data = Data();
        string[] common = ["pretrain", "--data", data, "--steps", "4", "--batch", "4", "--seq", "16", "--threads", "1", "--data-shards", "2"];
        string whole = Path.Combine(folder.Path, "whole"), part = Path.Combine(folder.Path, "part");
        Assert.Equal(0, Invoke([.. common, "--out", whole]).Code);
        Assert.Equal(0, Invoke([.. common, "--out", part, "--save-every", "2"]).Code);
        string checkpoint = Path.Combine(part, "checkpoint-2");

        var (code, _, error) = Invoke(["pretrain", "--data", data, "--steps", "4", "--batch", "4", "--seq", "16", "--threads", "1", "--data-shards", "4",
            "--out", Path.Combine(folder.Path, "other"), "--resume", checkpoint]);
        Assert.Equal(1, code);
        Assert.Contains("--data-shards was 2 in the checkpoint, 4 now", error);

        string resumed = Path.Combine(folder.Path, "resumed");
        Assert.Equal(0, Invoke([.. common, "--out", resumed, "--resume", checkpoint]).Code);
        Assert.Equal(File.ReadAllBytes(Path.Combine(whole, "model.safetensors")), File.ReadAllBytes(Path.Combine(resumed, "model.safetensors")));
    }

    public void Dispose() => folder.Dispose();

    private static (int Code, string Output, string Error) Invoke(string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
