// Confinement of adapter folders named at run time (the server's /v1/load_lora_adapter): the folder must
// lie inside the adapters directory after ".." and every symbolic link on the way are resolved, and so
// must the adapter files in it (the registry's own check, AdapterPaths).
using PeftKernels.Engine;

namespace PeftKernels.Serving;

/// <summary>Resolves adapter folders inside an adapters directory.</summary>
public static class AdapterFolders
{
    /// <summary>
    /// The full, link-resolved path of <paramref name="folder"/> (relative folders are taken relative to <paramref name="root"/>),
    /// refused unless it and its adapter files lie inside <paramref name="root"/>.
    /// </summary>
    /// <exception cref="UnauthorizedAccessException">It resolves outside <paramref name="root"/> (traversal, an absolute path elsewhere, or a link out).</exception>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public static string Resolve(string folder, string root)
    {
        ArgumentException.ThrowIfNullOrEmpty(root);
        return AdapterPaths.Resolve(folder, root);
    }
}
