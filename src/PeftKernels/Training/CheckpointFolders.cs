// The checkpoints of a training run, as Hugging Face's Trainer lays them out: one folder
// <run>/checkpoint-<step>/ per save. Each is written whole or not at all: its files are written
// into a hidden staging folder <run>/.checkpoint-<step>.<id>.staged/ and only then is that folder
// renamed to checkpoint-<step> (one rename, atomic on one volume). A folder being replaced or
// pruned is first renamed to a hidden .checkpoint-<step>.<id>.deleting/ and then deleted. So a
// process killed at any moment leaves every checkpoint-<step> folder complete; what it may leave
// behind are hidden staging or deleting folders, which CleanStale removes and Latest never picks.
// Publish writes the run's final files the same way (staged in .final.<id>.staged/, then each
// file moved into the run folder).
using System.Globalization;
using System.Text.RegularExpressions;

namespace PeftKernels.Training;

/// <summary>The <c>checkpoint-&lt;step&gt;</c> folders of a training run's output folder; see the file header for the layout.</summary>
public static partial class CheckpointFolders
{
    /// <summary>The name prefix of a checkpoint folder (followed by the step).</summary>
    public const string Prefix = "checkpoint-";

    /// <summary>The path of the checkpoint of <paramref name="step"/> in <paramref name="runFolder"/>.</summary>
    public static string PathOf(string runFolder, int step) => Path.Combine(runFolder, Prefix + step.ToString(CultureInfo.InvariantCulture));

    /// <summary>
    /// Writes <c>checkpoint-&lt;step&gt;</c> in <paramref name="runFolder"/>: <paramref name="write"/> fills an empty staging folder,
    /// which is then renamed into place (replacing an older checkpoint of the same step); afterwards only the
    /// <paramref name="keepLast"/> newest checkpoints are kept (0 = keep all). Returns the checkpoint's path.
    /// </summary>
    public static string Save(string runFolder, int step, Action<string> write, int keepLast = 0)
    {
        ArgumentException.ThrowIfNullOrEmpty(runFolder);
        ArgumentNullException.ThrowIfNull(write);
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        ArgumentOutOfRangeException.ThrowIfNegative(keepLast);
        Directory.CreateDirectory(runFolder);
        string final = PathOf(runFolder, step);
        string staging = Path.Combine(runFolder, $".{Prefix}{step.ToString(CultureInfo.InvariantCulture)}.{Guid.NewGuid():N}.staged");
        Directory.CreateDirectory(staging);
        try
        {
            write(staging);
        }
        catch
        {
            Directory.Delete(staging, recursive: true);
            throw;
        }

        if (Directory.Exists(final))
        {
            Retire(runFolder, step, final);
        }

        Directory.Move(staging, final);
        if (keepLast > 0)
        {
            foreach (var (old, path) in List(runFolder).Where(c => c.Step != step).OrderByDescending(c => c.Step).Skip(keepLast - 1))
            {
                Retire(runFolder, old, path);
            }
        }

        return final;
    }

    /// <summary>
    /// Writes a run's final files into <paramref name="runFolder"/>: <paramref name="write"/> fills a hidden staging folder
    /// (.final.&lt;id&gt;.staged), whose files are then moved into place one by one (each move atomic), replacing files of the same name.
    /// </summary>
    public static void Publish(string runFolder, Action<string> write)
    {
        ArgumentException.ThrowIfNullOrEmpty(runFolder);
        ArgumentNullException.ThrowIfNull(write);
        Directory.CreateDirectory(runFolder);
        string staging = Path.Combine(runFolder, $".final.{Guid.NewGuid():N}.staged");
        Directory.CreateDirectory(staging);
        try
        {
            write(staging);
            foreach (string file in Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList())
            {
                string target = Path.Combine(runFolder, Path.GetRelativePath(staging, file));
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.Move(file, target, overwrite: true);
            }
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>The complete checkpoints in <paramref name="runFolder"/> (folders <c>checkpoint-&lt;step&gt;</c> holding a trainer state), by step.</summary>
    public static IReadOnlyList<(int Step, string Path)> List(string runFolder)
    {
        if (!Directory.Exists(runFolder))
        {
            return [];
        }

        var found = new List<(int Step, string Path)>();
        foreach (string path in Directory.EnumerateDirectories(runFolder))
        {
            var match = CheckpointName().Match(Path.GetFileName(path));
            if (match.Success && int.TryParse(match.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int step)
                && File.Exists(Path.Combine(path, Trainer.StateJsonFile)))
            {
                found.Add((step, path));
            }
        }

        return [.. found.OrderBy(c => c.Step)];
    }

    /// <summary>The newest complete checkpoint in <paramref name="runFolder"/>, or null when there is none.</summary>
    public static string? Latest(string runFolder) => List(runFolder) is { Count: > 0 } all ? all[^1].Path : null;

    /// <summary>Deletes the staging and deleting folders a killed run left in <paramref name="runFolder"/>; returns how many.</summary>
    public static int CleanStale(string runFolder)
    {
        if (!Directory.Exists(runFolder))
        {
            return 0;
        }

        var stale = Directory.EnumerateDirectories(runFolder).Where(p => StaleName().IsMatch(Path.GetFileName(p))).ToList();
        foreach (string path in stale)
        {
            Directory.Delete(path, recursive: true);
        }

        return stale.Count;
    }

    /// <summary>Whether <paramref name="name"/> (a folder entry name) is a checkpoint folder or a leftover of one being written or deleted.</summary>
    public static bool IsCheckpointEntry(string name) => CheckpointName().IsMatch(name) || StaleName().IsMatch(name);

    private static void Retire(string runFolder, int step, string path)
    {
        string doomed = Path.Combine(runFolder, $".{Prefix}{step.ToString(CultureInfo.InvariantCulture)}.{Guid.NewGuid():N}.deleting");
        Directory.Move(path, doomed);
        Directory.Delete(doomed, recursive: true);
    }

    [GeneratedRegex(@"^checkpoint-([0-9]+)$", RegexOptions.CultureInvariant)]
    private static partial Regex CheckpointName();

    [GeneratedRegex(@"^\.(checkpoint-[0-9]+|final)\.[0-9a-f]{32}\.(staged|deleting)$", RegexOptions.CultureInvariant)]
    private static partial Regex StaleName();
}
