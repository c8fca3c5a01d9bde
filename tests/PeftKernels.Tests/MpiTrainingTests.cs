using System.Diagnostics;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>A fact that runs only where MPICH's launcher is installed (`.ci/run` installs the Debian package mpich when it is missing).</summary>
public sealed class MpichFactAttribute : FactAttribute
{
    public MpichFactAttribute()
    {
        if (MpiTrainingTests.Launcher == null)
        {
            Skip = "mpirun.mpich is not on PATH: install MPICH (Debian: apt-get install mpich) to run the 2-rank MPI exactness test; .ci/run installs it";
        }
    }
}

/// <summary>`mpirun.mpich -np 2 peft train|pretrain --distributed` on loopback against one process over the same 2 shards: the same bytes.</summary>
public sealed class MpiTrainingTests : IDisposable
{
    private readonly TempFolder folder = new();

    /// <summary>The full path of mpirun.mpich, or null.</summary>
    internal static string? Launcher { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "")
        .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
        .Select(d => Path.Combine(d, "mpirun.mpich"))
        .FirstOrDefault(File.Exists);

    [MpichFact]
    public void TwoMpiRanksGiveTheAdapterAndModelBytesOfOneProcessOverTheSameShards()
    {
        string data = Path.Combine(folder.Path, "data.txt");
        var rng = new Random(1);
        string[] words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "while", "birds", "sing"];
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 30).Select(_ => string.Join(' ', Enumerable.Range(0, 50).Select(_ => words[rng.Next(words.Length)])))));
        string[] pretrain = ["pretrain", "--data", data, "--steps", "3", "--batch", "4", "--seq", "32", "--threads", "1"];
        string mpiModel = Path.Combine(folder.Path, "model-2ranks"), model = Path.Combine(folder.Path, "model");
        var ranks = Run(true, [.. pretrain, "--out", mpiModel, "--distributed"]);
        Assert.Contains("data-parallel: 2 rank(s)", ranks.Output);
        Run(false, [.. pretrain, "--out", model, "--data-shards", "2"]);
        AssertSameBytes(Path.Combine(model, "model.safetensors"), Path.Combine(mpiModel, "model.safetensors"));

        string[] train = ["train", "--model", model, "--data", data, "--steps", "3", "--batch", "4", "--seq", "32", "--grad-accum", "2", "--dropout", "0.1", "--r", "4", "--threads", "1"];
        string two = Path.Combine(folder.Path, "adapter-2ranks"), one = Path.Combine(folder.Path, "adapter-1process"), unsharded = Path.Combine(folder.Path, "adapter-1shard");
        ranks = Run(true, [.. train, "--out", two, "--distributed"]);
        // Rank 0 alone prints: one final line, one set of step lines.
        Assert.Single(ranks.Output.Split('\n'), l => l.StartsWith("saved adapter", StringComparison.Ordinal));
        Assert.Single(ranks.Output.Split('\n'), l => l.StartsWith("step 3/3", StringComparison.Ordinal));
        Run(false, [.. train, "--out", one, "--data-shards", "2"]);
        AssertSameBytes(Path.Combine(one, "adapter_model.safetensors"), Path.Combine(two, "adapter_model.safetensors"));

        // One shard is another summation (and other dropout masks): the equality above is not vacuous.
        Run(false, [.. train, "--out", unsharded, "--data-shards", "1"]);
        Assert.False(File.ReadAllBytes(Path.Combine(one, "adapter_model.safetensors")).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(unsharded, "adapter_model.safetensors"))));
    }

    [MpichFact]
    public void ShardsThatDoNotMatchTheRanksAreRefusedOnEveryRank()
    {
        string data = Path.Combine(folder.Path, "data.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("a small text to train on. ", 40)));
        var (code, output, error) = Execute(true, ["pretrain", "--data", data, "--steps", "1", "--batch", "4", "--seq", "16", "--out", Path.Combine(folder.Path, "m"), "--distributed", "--data-shards", "4"]);
        Assert.NotEqual(0, code);
        // The exit code and both streams go into the failure message: CI saw this exit non-zero with both streams empty once.
        Assert.True((error + output).Contains("--data-shards 4 must equal the number of ranks (2)", StringComparison.Ordinal),
            $"exit code {code}; stdout: '{output}'; stderr: '{error}'");
    }

    [MpichFact]
    public void ALauncherWhoseWorldTheLibraryDoesNotSeeIsRefused()
    {
        // OpenMPI's launcher (OMPI_COMM_WORLD_SIZE=2) around a process that loads MPICH: MPICH sees a world of 1, so every rank would
        // train alone, silently.
        string data = Path.Combine(folder.Path, "data.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("a small text to train on. ", 40)));
        var (code, output, error) = Execute(false, ["pretrain", "--data", data, "--steps", "1", "--batch", "4", "--seq", "16", "--out", Path.Combine(folder.Path, "m"), "--distributed"],
            ("OMPI_COMM_WORLD_SIZE", "2"), (Distributed.MpiAllReduce.LibraryVariable, "libmpich.so.12"));
        Assert.Equal(1, code);
        Assert.Contains("the launcher started 2 ranks (OMPI_COMM_WORLD_SIZE=2) but libmpich.so.12 reports a world of 1", error + output);
        Assert.False(Directory.Exists(Path.Combine(folder.Path, "m")));
    }

    public void Dispose() => folder.Dispose();

    private static void AssertSameBytes(string expected, string actual) =>
        Assert.True(File.ReadAllBytes(expected).AsSpan().SequenceEqual(File.ReadAllBytes(actual)), $"{actual} differs from {expected}");

    private static (string Output, string Error) Run(bool mpi, string[] args)
    {
        var (code, output, error) = Execute(mpi, args);
        Assert.True(code == 0, $"peft {string.Join(' ', args)} exited {code}:\n{output}\n{error}");
        return (output, error);
    }

    private static (int Code, string Output, string Error) Execute(bool mpi, string[] args, params (string Name, string Value)[] environment)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var info = new ProcessStartInfo(mpi ? Launcher! : dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (mpi)
        {
            foreach (string a in new[] { "-np", "2", dotnet })
            {
                info.ArgumentList.Add(a);
            }
        }

        foreach (var (name, value) in environment)
        {
            info.Environment[name] = value;
        }

        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "peft.dll"));
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"peft {string.Join(' ', args)} did not finish in 3 minutes");
        }

        return (process.ExitCode, output.Result, error.Result);
    }
}
