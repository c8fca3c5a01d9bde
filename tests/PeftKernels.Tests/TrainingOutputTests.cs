// `peft train` and `peft pretrain` check their arguments and --out before any work (issue 14):
// a bad --out (inside the base model folder, an existing non-empty folder without --overwrite, an
// existing file, an unwritable place), a missing --data, a --seq beyond max_position_embeddings or
// a --resume checkpoint of another run exits 1 at once, naming what was wrong, and writes nothing.
// The model folder of most cases holds only config.json: code that loaded the model (or read the
// data) before checking would fail on the missing weights with another message.
using System.CommandLine;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class TrainingOutputTests : IDisposable
{
    private readonly TempFolder folder = new();

    public TrainingOutputTests()
    {
        ModelFolder = folder.File("model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        ConfigOnly = folder.File("config-only");
        Directory.CreateDirectory(ConfigOnly);
        File.Copy(Path.Combine(ModelFolder, "config.json"), Path.Combine(ConfigOnly, "config.json"));
        DataFile = folder.File("data.txt");
        File.WriteAllText(DataFile, string.Join("\n\n", Enumerable.Range(0, 20).Select(i => $"abc abc abcd {i}.")));
    }

    private string ModelFolder { get; }

    private string ConfigOnly { get; }

    private string DataFile { get; }

    private string[] Train(string model, params string[] more) =>
        ["train", "--model", model, "--data", DataFile, "--r", "2", "--steps", "2", "--batch", "1", "--seq", "8", "--threads", "1", .. more];

    private string[] Pretrain(params string[] more) => ["pretrain", "--data", DataFile, "--steps", "2", "--batch", "1", "--seq", "8", "--threads", "1", .. more];

    [Fact]
    public void TrainRefusesAnOutputInsideTheBaseModelFolder()
    {
        string before = Snapshot(ConfigOnly);
        var (code, output, error) = Invoke(Train(ConfigOnly, "--out", Path.Combine(ConfigOnly, "adapter")));
        Assert.Equal((1, ""), (code, output));
        Assert.Equal($"error: --out {Path.Combine(ConfigOnly, "adapter")} is inside the input folder --model {ConfigOnly}; outputs are never written inside an input folder: write somewhere else.\n", error);
        Assert.Equal(before, Snapshot(ConfigOnly));
    }

    [Theory]
    [InlineData("train")]
    [InlineData("pretrain")]
    public void AnExistingNonEmptyOutputFolderNeedsOverwrite(string verb)
    {
        string output = folder.File("existing");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "notes.txt"), "keep me");
        var refused = Invoke(Args(verb, ConfigOnly, "--out", output));
        Assert.Equal((1, ""), (refused.Code, refused.Output));
        Assert.Equal($"error: --out {output} already exists and holds 1 entry; give --overwrite to replace its files, or choose a new folder.\n", refused.Error);
        Assert.Equal(["notes.txt"], Directory.EnumerateFileSystemEntries(output).Select(Path.GetFileName));

        var replaced = Invoke(Args(verb, ModelFolder, "--out", output, "--overwrite"));
        Assert.Equal((0, ""), (replaced.Code, replaced.Error));
        Assert.True(File.Exists(Path.Combine(output, verb == "train" ? Lora.WeightsFile : "model.safetensors")));
        Assert.Equal("keep me", File.ReadAllText(Path.Combine(output, "notes.txt")));
    }

    [Theory]
    [InlineData("train")]
    [InlineData("pretrain")]
    public void AnOutputThatIsAFileOrBelowAFileIsRefusedAtOnce(string verb)
    {
        string file = folder.File("a-file");
        File.WriteAllText(file, "x");
        var existing = Invoke(Args(verb, ConfigOnly, "--out", file));
        Assert.Equal((1, ""), (existing.Code, existing.Output));
        Assert.Equal($"error: --out {file} is an existing file; expected a folder (new, empty, or with --overwrite an existing one).\n", existing.Error);

        string below = Path.Combine(file, "adapter");
        var under = Invoke(Args(verb, ConfigOnly, "--out", below));
        Assert.Equal((1, ""), (under.Code, under.Output));
        Assert.Equal($"error: --out {below}: {file} is a file, so no folder can be created below it.\n", under.Error);
        Assert.Equal("x", File.ReadAllText(file));
    }

    [Theory]
    [InlineData("train")]
    [InlineData("pretrain")]
    public void AnUnwritableOutputFolderIsRefusedAtOnce(string verb)
    {
        // root may write anywhere: for root (as CI may run) the unwritable place is a path below an existing file.
        if (Environment.UserName == "root" || OperatingSystem.IsWindows())
        {
            string file = folder.File("plain-file");
            File.WriteAllText(file, "x");
            string below = Path.Combine(file, "sub", "out");
            var refused = Invoke(Args(verb, ConfigOnly, "--out", below));
            Assert.Equal((1, ""), (refused.Code, refused.Output));
            Assert.Equal($"error: --out {below}: {file} is a file, so no folder can be created below it.\n", refused.Error);
            return;
        }

        string parent = folder.File("read-only");
        Directory.CreateDirectory(parent);
        File.SetUnixFileMode(parent, UnixFileMode.UserRead | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        try
        {
            string output = Path.Combine(parent, "out");
            var (code, text, error) = Invoke(Args(verb, ConfigOnly, "--out", output));
            Assert.Equal((1, ""), (code, text));
            Assert.StartsWith($"error: --out {output}: cannot write in {parent} (", error);
            Assert.False(Directory.Exists(output));
        }
        finally
        {
            File.SetUnixFileMode(parent, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    [Theory]
    [InlineData("train")]
    [InlineData("pretrain")]
    public void AMissingOrUnreadableDataFileIsRefusedBeforeTheModelLoads(string verb)
    {
        string output = folder.File("out");
        string missing = folder.File("missing.txt");
        var args = Args(verb, ConfigOnly, "--out", output);
        args[Array.IndexOf(args, DataFile)] = missing;
        var (code, text, error) = Invoke(args);
        Assert.Equal((1, ""), (code, text));
        Assert.Equal($"error: --data {missing} does not exist.\n", error);

        args[Array.IndexOf(args, missing)] = folder.Path;
        var isFolder = Invoke(args);
        Assert.Equal($"error: --data {folder.Path} is a folder; expected a file.\n", isFolder.Error);

        if (Environment.UserName != "root" && !OperatingSystem.IsWindows())
        {
            string unreadable = folder.File("unreadable.txt");
            File.WriteAllText(unreadable, "abc");
            File.SetUnixFileMode(unreadable, UnixFileMode.None);
            args[Array.IndexOf(args, folder.Path)] = unreadable;
            var denied = Invoke(args);
            Assert.StartsWith($"error: --data {unreadable} cannot be read (", denied.Error);
        }

        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void ASeqBeyondMaxPositionEmbeddingsIsRefusedNamingBothValues()
    {
        string output = folder.File("out");
        var train = Invoke(WithSeq(Train(ConfigOnly, "--out", output), "513"));
        Assert.Equal((1, ""), (train.Code, train.Output));
        Assert.Equal($"error: --seq must be at most 512 (max_position_embeddings in {Path.Combine(ConfigOnly, "config.json")}); got 513.\n", train.Error);

        var pretrain = Invoke(WithSeq(Pretrain("--config", "small", "--out", output), "1025"));
        Assert.Equal((1, ""), (pretrain.Code, pretrain.Output));
        Assert.Equal("error: --seq must be at most 1024 (max_position_embeddings of the small config); got 1025.\n", pretrain.Error);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void ALearningRateBeyondFloat32IsRefusedUpFront()
    {
        string output = folder.File("out");
        var pretrain = Invoke(Pretrain("--lr", "1e39", "--out", output));
        Assert.Equal((1, ""), (pretrain.Code, pretrain.Output));
        Assert.Equal("error: --lr must be in [0, 3.4028234663852886E+38]; got 1E+39.\n", pretrain.Error);
        var train = Invoke(Train(ConfigOnly, "--lr", "1e38", "--lora-plus-ratio", "16", "--out", output));
        Assert.Equal((1, ""), (train.Code, train.Output));
        Assert.Equal("error: --lr × --lora-plus-ratio must be at most 3.4028235E+38 (lora_B's learning rate, float32); got 1E+38 × 16 = 1.6E+39.\n", train.Error);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void ResumeContinuesIntoItsOwnRunFolderButRefusesAnotherRunsCheckpoint()
    {
        string run = folder.File("run");
        Assert.Equal(0, Invoke(Pretrain("--save-every", "1", "--out", run)).Code);

        // A finished run folder holds the final model too: continuing into it needs --overwrite.
        var finished = Invoke(Pretrain("--resume", run, "--out", run));
        Assert.Equal(1, finished.Code);
        Assert.StartsWith($"error: --out {run} already exists and holds 4 entries; give --overwrite", finished.Error);

        // Options that change the run's numbers must be the checkpoint's; each mismatch is named with both values.
        var other = Invoke(Pretrain("--seed", "7", "--lr", "0.5", "--resume", CheckpointFolders(run, 1), "--out", folder.File("other")));
        Assert.Equal((1, ""), (other.Code, other.Output));
        Assert.Equal($"error: --resume {CheckpointFolders(run, 1)} belongs to a different run: --lr was 0.003 in the checkpoint, 0.5 now; --seed was 0 in the checkpoint, 7 now.\n", other.Error);
        var train = Invoke(Train(ModelFolder, "--resume", run, "--out", folder.File("other")));
        Assert.Equal(1, train.Code);
        Assert.Equal($"error: --resume {CheckpointFolders(run, 2)} was written by peft pretrain, not peft train.\n", train.Error);
        Assert.False(Directory.Exists(folder.File("other")));

        // A folder without a checkpoint, and a run folder holding only checkpoints (a killed run), which --resume may continue into.
        var none = Invoke(Pretrain("--resume", ConfigOnly, "--out", folder.File("x")));
        Assert.Equal($"error: --resume {ConfigOnly} holds no checkpoint: neither trainer_state.json nor a complete checkpoint-<step> folder.\n", none.Error);
        foreach (string file in Directory.EnumerateFiles(run))
        {
            File.Delete(file);
        }

        Directory.Delete(CheckpointFolders(run, 2), recursive: true);
        var resumed = Invoke(Pretrain("--save-every", "1", "--resume", run, "--out", run));
        Assert.Equal((0, ""), (resumed.Code, resumed.Error));
        Assert.Contains($"resumed from {CheckpointFolders(run, 1)} at step 1/2", resumed.Output);
    }

    private static string[] WithSeq(string[] args, string seq)
    {
        args[Array.IndexOf(args, "--seq") + 1] = seq;
        return args;
    }

    private static string CheckpointFolders(string run, int step) => Training.CheckpointFolders.PathOf(run, step);

    private string[] Args(string verb, string model, params string[] more) => verb == "train" ? Train(model, more) : Pretrain(more);

    private static string Snapshot(string path) =>
        string.Join("\n", Directory.EnumerateFileSystemEntries(path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal));

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    public void Dispose() => folder.Dispose();
}
