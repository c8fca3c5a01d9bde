// The up-front checks of output paths that every writing verb shares, run before any model is
// loaded or any step trained, so that a run never does its work and then fails on save:
//   - the output is never an input, never inside an input folder, and never a folder that
//     contains an input (replacing it would destroy what is being read);
//   - an existing output (a file, or a folder with anything in it) is refused unless the verb's
//     --overwrite is given; an empty existing folder is fine;
//   - a file where a folder is expected (or the reverse) is refused;
//   - the folder the output will be written in (the nearest existing ancestor) must accept a
//     new file: a probe file is created and deleted there.
// Paths are compared after resolving symbolic links of their existing part (so a link to an
// input folder is that folder), case-insensitively where the file system usually is (Windows,
// macOS). With --overwrite, replacing is the writer's job: a model folder keeps no model file
// of the old output that the new one does not write (CheckpointWriter), a file is replaced
// atomically.
// Every failure is an ArgumentException naming the option, the path and what was wrong, which
// Cli.Guard prints as one "error: ..." line with exit code 1.
using System.CommandLine;

namespace PeftKernels.Cli;

/// <summary>What a verb writes at its output path.</summary>
internal enum OutputKind
{
    /// <summary>A single file (e.g. a .safetensors file).</summary>
    File,

    /// <summary>A folder of files (a model or adapter folder).</summary>
    Folder,
}

/// <summary>Checks of output paths before any work; see the file header for the rules.</summary>
internal static class OutputPaths
{
    /// <summary>The shared `--overwrite` flag.</summary>
    internal static Option<bool> OverwriteOption() =>
        new("--overwrite") { Description = "Replace an existing output instead of refusing (an input is never overwritten)." };

    /// <summary>
    /// Checks <paramref name="path"/> (given as <paramref name="option"/>) as an output of <paramref name="kind"/>
    /// against <paramref name="inputs"/> (option name, path: files or folders read by the verb); returns the full path.
    /// </summary>
    /// <exception cref="ArgumentException">The output may not be written; the message says why.</exception>
    internal static string Check(string option, string path, OutputKind kind, bool overwrite, params (string Option, string? Path)[] inputs)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new ArgumentException($"{option} must name a {Noun(kind)}; got an empty path.");
        }

        string full = Normalize(path);
        foreach (var (inputOption, inputPath) in inputs)
        {
            if (string.IsNullOrEmpty(inputPath))
            {
                continue;
            }

            string input = Normalize(inputPath);
            if (string.Equals(input, full, Comparison))
            {
                throw new ArgumentException($"{option} {path} is the same path as {inputOption}; an input is never overwritten: write somewhere else.");
            }

            if (Directory.Exists(input) && IsInside(full, input))
            {
                throw new ArgumentException($"{option} {path} is inside the input folder {inputOption} {inputPath}; outputs are never written inside an input folder: write somewhere else.");
            }

            if (IsInside(input, full))
            {
                throw new ArgumentException($"{option} {path} contains the input {inputOption} {inputPath}; write somewhere else.");
            }
        }

        if (File.Exists(full))
        {
            if (kind == OutputKind.Folder)
            {
                throw new ArgumentException($"{option} {path} is an existing file; expected a folder (new, empty, or with --overwrite an existing one).");
            }

            if (!overwrite)
            {
                throw new ArgumentException($"{option} {path} already exists; give --overwrite to replace it.");
            }
        }
        else if (Directory.Exists(full))
        {
            if (kind == OutputKind.File)
            {
                throw new ArgumentException($"{option} {path} is an existing folder; expected a file path.");
            }

            int entries = Directory.EnumerateFileSystemEntries(full).Count();
            if (entries > 0 && !overwrite)
            {
                throw new ArgumentException($"{option} {path} already exists and holds {entries} entr{(entries == 1 ? "y" : "ies")}; give --overwrite to replace its files, or choose a new folder.");
            }
        }

        ProbeWritable(option, path, kind == OutputKind.Folder && Directory.Exists(full) ? full : Path.GetDirectoryName(full)!);
        return full;
    }

    private static StringComparison Comparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// Full path without a trailing separator, so that "a/b/" and "a/b" compare equal, with every symbolic link along
    /// its existing part resolved (a path through a link to a folder is a path in that folder).
    /// </summary>
    internal static string Normalize(string path)
    {
        string full = Trim(Path.GetFullPath(path));
        string root = Path.GetPathRoot(full) ?? "";
        string resolved = root;
        foreach (string part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            resolved = Path.Combine(resolved, part);
            FileSystemInfo info = Directory.Exists(resolved) ? new DirectoryInfo(resolved) : new FileInfo(resolved);
            if (info.Exists && info.LinkTarget != null && info.ResolveLinkTarget(returnFinalTarget: true) is { } target)
            {
                resolved = Trim(Path.GetFullPath(target.FullName));
            }
        }

        return Trim(resolved);
    }

    private static string Trim(string full) => Path.TrimEndingDirectorySeparator(full);

    /// <summary>Whether <paramref name="path"/> lies strictly below <paramref name="folder"/> (both normalized).</summary>
    internal static bool IsInside(string path, string folder) =>
        path.Length > folder.Length && path.StartsWith(folder, Comparison)
        && (path[folder.Length] == Path.DirectorySeparatorChar || Path.EndsInDirectorySeparator(folder));

    /// <summary>Creates and deletes a probe file in the nearest existing ancestor of <paramref name="folder"/>.</summary>
    private static void ProbeWritable(string option, string path, string folder)
    {
        string existing = folder;
        while (!Directory.Exists(existing))
        {
            if (File.Exists(existing))
            {
                throw new ArgumentException($"{option} {path}: {existing} is a file, so no folder can be created below it.");
            }

            existing = Path.GetDirectoryName(existing) ?? throw new ArgumentException($"{option} {path}: no existing parent folder.");
        }

        string probe = Path.Combine(existing, $".peft-write-probe.{Guid.NewGuid():N}");
        try
        {
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{option} {path}: cannot write in {existing} ({e.Message}).", e);
        }
    }

    private static string Noun(OutputKind kind) => kind == OutputKind.File ? "file" : "folder";
}
