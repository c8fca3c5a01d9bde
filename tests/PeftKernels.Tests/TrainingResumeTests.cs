// Resumable training (issue 14): `peft train` and `peft pretrain` run as real processes with
// --save-every 1, are killed with SIGKILL at a seeded random step (a moment after the checkpoint
// of that step appears, so the kill may land while the next one is being written), and are resumed
// with --resume; the final files (and the last checkpoint) must be byte-identical to those of a run
// never stopped. A second test leaves what a kill between staging and rename leaves (hidden
// staging and deleting folders with partial files) and checks that --resume ignores and removes it.
using System.CommandLine;
using System.Diagnostics;
using PeftKernels.Models;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

public sealed class TrainingResumeTests : IDisposable
{
    private readonly TempFolder folder = new();

    public TrainingResumeTests()
    {
        ModelFolder = folder.File("model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        DataFile = folder.File("data.txt");
        File.WriteAllText(DataFile, string.Join("\n\n", Enumerable.Range(0, 40).Select(i => $"the cat sat on the mat {i % 7}. the dog ran {i}.")));
    }

    private string ModelFolder { get; }

    private string DataFile { get; }

    private string[] TrainArgs(int steps) =>
        ["train", "--model", ModelFolder, "--data", DataFile, "--r", "4", "--alpha", "8", "--dropout", "0.1", "--targets", "q_proj,v_proj,up_proj",
            "--lr", "5e-3", "--lora-plus-ratio", "4", "--warmup", "3", "--grad-accum", "2", "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--batch", "2", "--seq", "16", "--seed", "5", "--threads", "1"];

    private string[] PretrainArgs(int steps) =>
        ["pretrain", "--data", DataFile, "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture), "--batch", "2", "--seq", "16",
            "--lr", "1e-2", "--seed", "3", "--threads", "1"];

    [Theory]
    [InlineData("train", 11)]
    [InlineData("pretrain", 12)]
    public void ARunKilledAtARandomStepAndResumedGivesTheBytesOfAnUninterruptedRun(string verb, int seed)
    {
        const int Steps = 40;
        string[] args = verb == "train" ? TrainArgs(Steps) : PretrainArgs(Steps);
        string straight = folder.File("straight"), killed = folder.File("killed");
        var reference = Invoke([.. args, "--save-every", "1", "--out", straight]);
        Assert.Equal((0, ""), (reference.Code, reference.Error));

        var rng = new Random(seed);
        int killAt = rng.Next(2, Steps - 15);
        using (var process = Start([.. args, "--save-every", "1", "--out", killed]))
        {
            var clock = Stopwatch.StartNew();
            while (!Directory.Exists(CheckpointFolders.PathOf(killed, killAt)))
            {
                if (process.HasExited)
                {
                    Assert.Fail($"peft {verb} exited ({process.ExitCode}) before step {killAt}");
                }

                Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), $"no checkpoint-{killAt} after two minutes");
                Thread.Sleep(2);
            }

            Thread.Sleep(rng.Next(0, 15));
            Assert.False(process.HasExited, $"peft {verb} finished before it could be killed after step {killAt}");
            process.Kill();
            process.WaitForExit();
        }

        // What the kill left: complete checkpoints (and perhaps a half-written hidden one), no final files.
        var left = Directory.EnumerateFileSystemEntries(killed).Select(Path.GetFileName).ToList();
        Assert.All(left, name => Assert.True(CheckpointFolders.IsCheckpointEntry(name!), $"unexpected {name} after the kill"));
        int resumedFrom = CheckpointFolders.List(killed)[^1].Step;
        Assert.InRange(resumedFrom, killAt, Steps - 1);

        var resumed = Invoke([.. args, "--save-every", "1", "--resume", killed, "--out", killed]);
        Assert.Equal((0, ""), (resumed.Code, resumed.Error));
        Assert.Contains($"resumed from {CheckpointFolders.PathOf(killed, resumedFrom)} at step {resumedFrom}/{Steps}", resumed.Output);

        AssertSameFiles(straight, killed);
        AssertSameFiles(CheckpointFolders.PathOf(straight, Steps), CheckpointFolders.PathOf(killed, Steps));
        Assert.Equal(Steps, CheckpointFolders.List(killed).Count);
    }

    [Fact]
    public void ResumeIgnoresAndRemovesWhatAKillBetweenStagingAndRenameLeft()
    {
        string[] args = TrainArgs(6);
        string straight = folder.File("straight"), run = folder.File("run");
        Assert.Equal(0, Invoke([.. args, "--out", straight]).Code);

        // The state a kill leaves after checkpoint-2 and during the writing of checkpoint-4, the deletion of an
        // older checkpoint and the staging of the final files: hidden folders with partial files.
        Assert.Equal(0, Invoke([.. args, "--save-every", "2", "--out", run]).Code);
        foreach (string entry in Directory.EnumerateFileSystemEntries(run).Where(e => !e.EndsWith("checkpoint-2", StringComparison.Ordinal)))
        {
            if (Directory.Exists(entry))
            {
                Directory.Delete(entry, recursive: true);
            }
            else
            {
                File.Delete(entry);
            }
        }

        string staged = Path.Combine(run, $".checkpoint-4.{Guid.NewGuid():N}.staged");
        Directory.CreateDirectory(staged);
        byte[] weights = File.ReadAllBytes(Path.Combine(run, "checkpoint-2", "adapter_model.safetensors"));
        File.WriteAllBytes(Path.Combine(staged, "adapter_model.safetensors"), weights[..(weights.Length / 2)]);
        File.WriteAllText(Path.Combine(staged, Trainer.StateJsonFile), "{\"step\": 4, \"se");
        string deleting = Path.Combine(run, $".checkpoint-0.{Guid.NewGuid():N}.deleting");
        Directory.CreateDirectory(deleting);
        File.WriteAllText(Path.Combine(deleting, "adapter_config.json"), "{");
        string final = Path.Combine(run, $".final.{Guid.NewGuid():N}.staged");
        Directory.CreateDirectory(final);
        File.WriteAllBytes(Path.Combine(final, "adapter_model.safetensors"), weights[..100]);

        var resumed = Invoke([.. args, "--save-every", "2", "--resume", run, "--out", run]);
        Assert.Equal((0, ""), (resumed.Code, resumed.Error));
        Assert.Contains($"resumed from {CheckpointFolders.PathOf(run, 2)} at step 2/6", resumed.Output);
        Assert.Contains($"removed 3 half-written checkpoint folder(s) a stopped run left in {run}", resumed.Output);
        Assert.False(Directory.Exists(staged) || Directory.Exists(deleting) || Directory.Exists(final));
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "checkpoint-4", "checkpoint-6"],
            Directory.EnumerateFileSystemEntries(run).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        AssertSameFiles(straight, run);
    }

    [Fact]
    public void SaveTotalLimitKeepsTheNewestCheckpointsOfARun()
    {
        string run = folder.File("run");
        var (code, _, error) = Invoke([.. PretrainArgs(5), "--save-every", "1", "--save-total-limit", "2", "--out", run]);
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(["checkpoint-4", "checkpoint-5", "config.json", "model.safetensors"],
            Directory.EnumerateFileSystemEntries(run).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(["config.json", "model.safetensors", Trainer.StateJsonFile, Trainer.StateTensorsFile, "training_args.json"],
            Directory.EnumerateFileSystemEntries(CheckpointFolders.PathOf(run, 5)).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void SaveKeepsOnlyTheNewestCheckpointsAndAFailedWriteLeavesNothing()
    {
        string run = folder.File("run");
        foreach (int step in new[] { 1, 2, 3, 4 })
        {
            CheckpointFolders.Save(run, step, dir => File.WriteAllText(Path.Combine(dir, Trainer.StateJsonFile), $"{step}"), keepLast: 2);
        }

        Assert.Equal([3, 4], CheckpointFolders.List(run).Select(c => c.Step));
        Assert.Throws<IOException>(() => CheckpointFolders.Save(run, 5, dir =>
        {
            File.WriteAllText(Path.Combine(dir, Trainer.StateJsonFile), "5");
            throw new IOException("disk full");
        }, keepLast: 2));
        Assert.Equal(["checkpoint-3", "checkpoint-4"], Directory.EnumerateFileSystemEntries(run).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(Path.Combine(run, "checkpoint-4"), CheckpointFolders.Latest(run));
    }

    private static void AssertSameFiles(string expected, string actual)
    {
        var files = Directory.EnumerateFiles(expected).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.NotEmpty(files);
        Assert.Equal(files, Directory.EnumerateFiles(actual).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (string? name in files)
        {
            Assert.True(File.ReadAllBytes(Path.Combine(expected, name!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, name!))),
                $"{name} differs between {expected} and {actual}");
        }
    }

    /// <summary>Starts the built `peft` tool (peft.dll next to the test assembly) as a separate process, output drained and discarded.</summary>
    private static Process Start(string[] args)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var info = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "peft.dll"));
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    public void Dispose() => folder.Dispose();
}
