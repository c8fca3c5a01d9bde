// Path confinement of the adapter registry: with an adapters directory set, an adapter folder (relative
// folders are taken relative to it) must lie inside it after ".." and every symbolic link on the way are
// resolved (each path component is checked, not only the last), and so must the two files PeftModel reads
// from it (adapter_config.json, adapter_model.safetensors), which could be links themselves. The server
// relies on this to keep requests from naming arbitrary folders. The check runs at Register and again
// right before each load, since links can change in between.
using PeftKernels.Peft;

namespace PeftKernels.Engine;

/// <summary>Resolves adapter folders and refuses those outside the registry's adapters directory.</summary>
internal static class AdapterPaths
{
    private const int MaxLinks = 40;

    /// <summary>The full, link-resolved path of <paramref name="folder"/>; with <paramref name="root"/> set, refused unless inside it.</summary>
    /// <exception cref="UnauthorizedAccessException">The folder or one of its adapter files resolves outside <paramref name="root"/>.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public static string Resolve(string folder, string? root)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (root == null)
        {
            string full = Path.GetFullPath(folder);
            return Directory.Exists(full) ? full : throw new DirectoryNotFoundException($"adapter folder '{folder}' does not exist.");
        }

        string realRoot = RealPath(Path.GetFullPath(root));
        string real = RealPath(Path.GetFullPath(folder, realRoot));
        if (!Inside(real, realRoot))
        {
            throw new UnauthorizedAccessException($"adapter folder '{folder}' resolves to '{real}', outside the adapters directory '{realRoot}'.");
        }

        if (!Directory.Exists(real))
        {
            throw new DirectoryNotFoundException($"adapter folder '{folder}' ('{real}') does not exist.");
        }

        foreach (string file in new[] { Lora.ConfigFile, Lora.WeightsFile })
        {
            string path = Path.Combine(real, file);
            if (File.Exists(path) && RealPath(path) is var target && !Inside(target, realRoot))
            {
                throw new UnauthorizedAccessException($"adapter file '{path}' resolves to '{target}', outside the adapters directory '{realRoot}'.");
            }
        }

        return real;
    }

    private static bool Inside(string path, string root) =>
        path == root || path.StartsWith(Path.EndsInDirectorySeparator(root) ? root : root + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    /// <summary>The path with "." and ".." removed and every symbolic link component replaced by its target (as realpath; missing tails kept).</summary>
    internal static string RealPath(string fullPath, int depth = 0)
    {
        if (depth > MaxLinks)
        {
            throw new IOException($"too many levels of symbolic links resolving '{fullPath}'.");
        }

        string current = Path.GetPathRoot(fullPath) ?? "/";
        var parts = fullPath[current.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < parts.Length; i++)
        {
            string next = Path.Combine(current, parts[i]);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.Exists && info.LinkTarget is { } target)
            {
                string resolved = Path.GetFullPath(target, current);
                string rest = string.Join(Path.DirectorySeparatorChar, parts[(i + 1)..]);
                return RealPath(rest.Length == 0 ? resolved : Path.Combine(resolved, rest), depth + 1);
            }

            current = next;
        }

        return Path.TrimEndingDirectorySeparator(current).Length == 0 ? current : Path.TrimEndingDirectorySeparator(current);
    }
}
