// What `peft train` and `peft pretrain` share around the Trainer: the output folder, checkpoints
// and resuming, and non-finite steps.
//   --out is checked before any work (OutputPaths: never inside an input, not an existing file,
//   writable; an existing non-empty folder needs --overwrite, except that with --resume a folder
//   holding nothing but checkpoint-<step> folders, the run's own, may be continued into).
//   --save-every N writes <out>/checkpoint-<step>/ every N steps (CheckpointFolders: staged, then
//   renamed, so a kill at any moment leaves only complete checkpoints): the adapter or model in
//   its normal layout, the trainer state (weights, AdamW moments, step, optimizer updates, losses,
//   skipped steps) and training_args.json (the options that fix the run's numbers).
//   --resume DIR (a checkpoint folder, or a run folder: its newest checkpoint) loads that state
//   after checking that every option in training_args.json equals this run's, and removes what a
//   killed run left half-written in --out. A resumed run gives the same bytes as one never stopped.
//   A diverged step (a non-finite loss or gradient norm, or an update that left a parameter
//   non-finite, found when a checkpoint or the final output is about to be written) stops the run
//   (exit 1), writes nothing of it and names the last good checkpoint;
//   the final files are written only after the last step, staged and moved into --out.
using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using PeftKernels.Training;

namespace PeftKernels.Cli;

/// <summary>The checkpoint, resume, overwrite and non-finite options of the training verbs, and the run around the Trainer.</summary>
internal sealed class TrainingRun
{
    /// <summary>The file in every checkpoint that records the options of its run.</summary>
    internal const string ArgsFile = "training_args.json";

    private readonly Option<int> saveEvery = new("--save-every")
    {
        HelpName = "steps",
        Description = "Write a checkpoint to <out>/checkpoint-<step>/ every this many optimizer steps (0 = none): the output files, optimizer state, step and data position.",
        DefaultValueFactory = _ => 0,
    };

    private readonly Option<int> saveTotalLimit = new("--save-total-limit")
    {
        HelpName = "count",
        Description = "Keep only this many newest checkpoints (0 = keep all).",
        DefaultValueFactory = _ => 0,
    };

    private readonly Option<string?> resume = new("--resume")
    {
        HelpName = "dir",
        Description = "Continue from a checkpoint folder, or from the newest checkpoint-<step> in a run folder; the options must be the checkpoint's.",
    };

    private readonly Option<bool> overwrite = OutputPaths.OverwriteOption();

    private readonly Option<bool> skipNonFinite = new("--skip-nonfinite-steps")
    {
        Description = "Skip a step whose loss or gradient norm is NaN or infinite (no update, optimizer state untouched) instead of stopping.",
    };

    private readonly Option<int?> maxSkipped = new("--max-skipped-steps")
    {
        HelpName = "count",
        Description = "With --skip-nonfinite-steps: stop (as diverged) at the non-finite step after this many were skipped (default: no limit).",
    };

    /// <summary>The options, to add to a verb.</summary>
    public IEnumerable<Option> Options => [saveEvery, saveTotalLimit, resume, overwrite, skipNonFinite, maxSkipped];

    /// <summary>The --out folder (full path).</summary>
    public string OutFolder { get; private set; } = "";

    /// <summary>The checkpoint to resume from, or null.</summary>
    public string? ResumeFrom { get; private set; }

    private int every;
    private int keep;
    private IReadOnlyDictionary<string, string> args = new Dictionary<string, string>();

    /// <summary>
    /// Checks the options, --out (against <paramref name="inputs"/>) and --resume before any work; <paramref name="runArgs"/> are
    /// the options that fix the run's numbers (option name to value), which a checkpoint to resume must match.
    /// </summary>
    public void Check(ParseResult parse, string outOption, string outPath, IReadOnlyDictionary<string, string> runArgs, params (string Option, string? Path)[] inputs)
    {
        every = parse.AtLeast(saveEvery, 0);
        keep = parse.AtLeast(saveTotalLimit, 0);
        if (parse.GetValue(maxSkipped) is { } max)
        {
            if (max < 0)
            {
                throw new ArgumentException($"--max-skipped-steps must be >= 0; got {max}.");
            }

            if (!parse.GetValue(skipNonFinite))
            {
                throw new ArgumentException("--max-skipped-steps applies with --skip-nonfinite-steps; give both or neither.");
            }
        }

        args = runArgs;
        string? resumeDir = parse.GetValue(resume);
        ResumeFrom = resumeDir == null ? null : Resolve(resumeDir);
        string full = Path.GetFullPath(outPath);
        bool ownRun = ResumeFrom != null && Directory.Exists(full)
            && Directory.EnumerateFileSystemEntries(full).All(e => Directory.Exists(e) && CheckpointFolders.IsCheckpointEntry(Path.GetFileName(e)));
        bool resumeInside = ResumeFrom != null && Path.GetFullPath(ResumeFrom).StartsWith(full.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar, StringComparison.Ordinal);
        var allInputs = resumeInside ? inputs : [.. inputs, ("--resume", resumeDir)];
        OutFolder = OutputPaths.Check(outOption, outPath, OutputKind.Folder, parse.GetValue(overwrite) || ownRun, allInputs);
        if (ResumeFrom != null)
        {
            CheckArgs(ResumeFrom, runArgs);
        }
    }

    /// <summary>The trainer options for non-finite steps.</summary>
    public TrainerOptions Apply(ParseResult parse, TrainerOptions options) => options with
    {
        SkipNonFiniteSteps = parse.GetValue(skipNonFinite),
        MaxSkippedSteps = parse.GetValue(maxSkipped) ?? int.MaxValue,
    };

    /// <summary>
    /// Resumes <paramref name="trainer"/> when asked, trains to the end with progress on <paramref name="log"/>, writing a checkpoint every
    /// --save-every steps (<paramref name="saveOutput"/> writes the adapter or model into a folder); then writes the final output into --out.
    /// With <paramref name="writes"/> false (a data-parallel rank other than 0) it trains and writes nothing.
    /// </summary>
    public void Run(Trainer trainer, TextWriter log, Action<string> saveOutput, Action? beforeFinalSave = null, bool writes = true)
    {
        string? last = null;
        if (ResumeFrom != null)
        {
            trainer.LoadCheckpoint(ResumeFrom);
            last = ResumeFrom;
            log.WriteLine($"resumed from {ResumeFrom} at step {trainer.Step}/{trainer.Options.Steps}");
        }

        int stale = writes ? CheckpointFolders.CleanStale(OutFolder) : 0;
        if (stale > 0)
        {
            log.WriteLine($"removed {stale} half-written checkpoint folder(s) a stopped run left in {OutFolder}");
        }

        try
        {
            TrainingView.Run(trainer, log, p =>
            {
                if (writes && every > 0 && p.Step % every == 0)
                {
                    last = CheckpointFolders.Save(OutFolder, p.Step, folder =>
                    {
                        saveOutput(folder);
                        trainer.SaveCheckpoint(folder);
                        WriteArgs(Path.Combine(folder, ArgsFile), args);
                    }, keep);
                }
            });
            trainer.EnsureFiniteParameters();
        }
        catch (TrainingDivergedException e)
        {
            string kept = last != null
                ? $"; the last good checkpoint is {last} (continue with --resume {last})"
                : every > 0 ? "; no checkpoint had been written yet, and nothing was saved" : "";
            throw kept.Length == 0 ? e : new TrainingDivergedException(e.Message + kept, e);
        }

        beforeFinalSave?.Invoke();
        if (writes)
        {
            CheckpointFolders.Publish(OutFolder, saveOutput);
        }
    }

    /// <summary>The last line's summary of skipped steps ("" when none).</summary>
    public static string Skipped(Trainer trainer) => trainer.SkippedSteps.Count == 0 ? ""
        : $"; {trainer.SkippedSteps.Count} non-finite step(s) skipped (step {string.Join(", ", trainer.SkippedSteps.Take(10))}{(trainer.SkippedSteps.Count > 10 ? ", …" : "")})";

    /// <summary>SHA-256 of a file, as lower-case hex.</summary>
    public static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>Checks that <paramref name="path"/> (given as <paramref name="option"/>) is a readable file.</summary>
    public static void CheckReadableFile(string option, string path)
    {
        if (!File.Exists(path))
        {
            throw new ArgumentException(Directory.Exists(path) ? $"{option} {path} is a folder; expected a file." : $"{option} {path} does not exist.");
        }

        try
        {
            using (File.OpenRead(path))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{option} {path} cannot be read ({e.Message}).", e);
        }
    }

    /// <summary>The checkpoint named by --resume: the folder itself when it holds a trainer state, else its newest checkpoint-&lt;step&gt;.</summary>
    private static string Resolve(string dir)
    {
        if (!Directory.Exists(dir))
        {
            throw new ArgumentException(File.Exists(dir) ? $"--resume {dir} is a file; expected a checkpoint folder or a run folder." : $"--resume {dir} does not exist.");
        }

        if (File.Exists(Path.Combine(dir, Trainer.StateJsonFile)))
        {
            return Path.GetFullPath(dir);
        }

        return CheckpointFolders.Latest(dir) is { } latest
            ? Path.GetFullPath(latest)
            : throw new ArgumentException($"--resume {dir} holds no checkpoint: neither {Trainer.StateJsonFile} nor a complete {CheckpointFolders.Prefix}<step> folder.");
    }

    private static void CheckArgs(string checkpoint, IReadOnlyDictionary<string, string> runArgs)
    {
        string path = Path.Combine(checkpoint, ArgsFile);
        if (!File.Exists(path))
        {
            throw new ArgumentException($"--resume {checkpoint} has no {ArgsFile}; it was not written by peft train or peft pretrain.");
        }

        var saved = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                saved[property.Name] = property.Value.GetString() ?? "";
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: expected a JSON object of strings ({e.Message}).", e);
        }

        if (saved.GetValueOrDefault("verb") is { } verb && runArgs.GetValueOrDefault("verb") is { } now && verb != now)
        {
            throw new ArgumentException($"--resume {checkpoint} was written by peft {verb}, not peft {now}.");
        }

        var mismatches = saved.Keys.Union(runArgs.Keys).Order(StringComparer.Ordinal)
            .Select(key => (Key: key, Then: saved.GetValueOrDefault(key), Now: runArgs.GetValueOrDefault(key)))
            .Where(m => m.Then != m.Now)
            .Select(m => $"{m.Key} was {m.Then ?? "(absent)"} in the checkpoint, {m.Now ?? "(absent)"} now")
            .ToList();
        if (mismatches.Count > 0)
        {
            string list = string.Join("; ", mismatches.Take(8)) + (mismatches.Count > 8 ? $"; and {mismatches.Count - 8} more" : "");
            throw new ArgumentException($"--resume {checkpoint} belongs to a different run: {list}.");
        }
    }

    private static void WriteArgs(string path, IReadOnlyDictionary<string, string> runArgs)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        foreach (var (key, value) in runArgs.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            json.WriteString(key, value);
        }

        json.WriteEndObject();
    }

    /// <summary>A number as the run's args record it.</summary>
    public static string Arg(double value) => value.ToString("R", CultureInfo.InvariantCulture);
}
