// The input side of a whole-checkpoint conversion: a single .safetensors file, a folder with
// model.safetensors, or a sharded Hugging Face folder (model.safetensors.index.json, whose
// {"weight_map": {tensor: shard}} names shards model-0000k-of-0000n.safetensors beside it).
// Opening validates everything before any output is written: the index parses, every shard
// it names exists and is a plain file name, every tensor it lists is in its shard, every
// tensor of a shard is listed there, no name appears twice, and the output is not the input.
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Quantization;

/// <summary>One tensor of a checkpoint and the shard (file name) holding it.</summary>
internal sealed record CheckpointTensor(string Shard, SafeTensorInfo Info)
{
    public string Name => Info.Name;
}

/// <summary>A validated input checkpoint: its shards in order and every tensor in them.</summary>
internal sealed class Checkpoint
{
    public const string IndexName = "model.safetensors.index.json";

    public const string SingleName = "model.safetensors";

    private Checkpoint(string folder, bool isFolder, string? indexPath, IReadOnlyList<string> shards,
        IReadOnlyList<CheckpointTensor> tensors, Dictionary<string, JsonElement> indexMetadata)
    {
        Folder = folder;
        IsFolder = isFolder;
        IndexPath = indexPath;
        Shards = shards;
        Tensors = tensors;
        ByName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        IndexMetadata = indexMetadata;
    }

    /// <summary>The folder holding the shards (the input itself when it is a folder).</summary>
    public string Folder { get; }

    /// <summary>True when the input is a folder (output is a folder too); false for a single file.</summary>
    public bool IsFolder { get; }

    /// <summary>The index file of a sharded folder, else null.</summary>
    public string? IndexPath { get; }

    /// <summary>Shard file names, in order (one entry for a single file).</summary>
    public IReadOnlyList<string> Shards { get; }

    /// <summary>Every tensor, shard by shard, in header order.</summary>
    public IReadOnlyList<CheckpointTensor> Tensors { get; }

    /// <summary>Tensors by name.</summary>
    public IReadOnlyDictionary<string, CheckpointTensor> ByName { get; }

    /// <summary>Entries of the index's "metadata" object other than total_size, kept in the output index.</summary>
    public IReadOnlyDictionary<string, JsonElement> IndexMetadata { get; }

    public string ShardPath(string shard) => Path.Combine(Folder, shard);

    /// <summary>Resolves and validates <paramref name="input"/>; checks <paramref name="output"/> against it.</summary>
    public static Checkpoint Open(string input, string output)
    {
        ArgumentException.ThrowIfNullOrEmpty(input);
        ArgumentException.ThrowIfNullOrEmpty(output);
        string inputFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(input));
        string outputFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(output));
        if (string.Equals(inputFull, outputFull, StringComparison.Ordinal))
        {
            throw new ArgumentException($"the output '{output}' is the input; write to another file or folder.", nameof(output));
        }

        if (File.Exists(inputFull))
        {
            if (Directory.Exists(outputFull))
            {
                throw new ArgumentException($"the input '{input}' is a file, so the output must be a file path; '{output}' is a folder.", nameof(output));
            }

            string folder = Path.GetDirectoryName(inputFull)!;
            string name = Path.GetFileName(inputFull);
            return new Checkpoint(folder, false, null, [name], ReadShards(folder, [name]), []);
        }

        if (!Directory.Exists(inputFull))
        {
            throw new FileNotFoundException($"the input '{input}' does not exist (neither a file nor a folder).", input);
        }

        if (File.Exists(outputFull))
        {
            throw new ArgumentException($"the input '{input}' is a folder, so the output must be a folder; '{output}' is a file.", nameof(output));
        }

        CheckFolderOutput(inputFull, outputFull, output);
        return OpenFolderCore(inputFull, input);
    }

    /// <summary>Refuses a model-folder output <paramref name="outputFull"/> inside the input folder <paramref name="inputFull"/> or containing it.</summary>
    /// <exception cref="ArgumentException">The output overlaps the input.</exception>
    internal static void CheckFolderOutput(string inputFull, string outputFull, string output)
    {
        inputFull = Path.TrimEndingDirectorySeparator(inputFull);
        outputFull = Path.TrimEndingDirectorySeparator(outputFull);
        if (string.Equals(inputFull, outputFull, StringComparison.Ordinal))
        {
            throw new ArgumentException($"the output '{output}' is the input folder {inputFull}; write to another folder.", nameof(output));
        }

        if (IsBelow(outputFull, inputFull))
        {
            throw new ArgumentException($"the output '{output}' is inside the input folder {inputFull}; write to a folder outside it.", nameof(output));
        }

        if (IsBelow(inputFull, outputFull))
        {
            throw new ArgumentException($"the output '{output}' contains the input folder {inputFull}; write to a folder outside it.", nameof(output));
        }
    }

    private static bool IsBelow(string path, string folder) =>
        path.Length > folder.Length && path.StartsWith(folder, StringComparison.Ordinal)
        && (path[folder.Length] == Path.DirectorySeparatorChar || Path.EndsInDirectorySeparator(folder));

    /// <summary>Resolves and validates a model folder (sharded or single-file) for reading.</summary>
    public static Checkpoint OpenFolder(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        if (!Directory.Exists(full))
        {
            throw new DirectoryNotFoundException($"the model folder '{folder}' does not exist.");
        }

        return OpenFolderCore(full, folder);
    }

    private static Checkpoint OpenFolderCore(string inputFull, string input)
    {
        string indexPath = Path.Combine(inputFull, IndexName);
        if (File.Exists(indexPath))
        {
            var (weightMap, metadata) = ReadIndex(indexPath);
            string[] shards = [.. weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];
            foreach (string shard in shards)
            {
                if (!File.Exists(Path.Combine(inputFull, shard)))
                {
                    string example = weightMap.First(e => e.Value == shard).Key;
                    throw new FileNotFoundException(
                        $"{indexPath}: the shard '{shard}' (holding '{example}' and others) does not exist in {inputFull}.", Path.Combine(inputFull, shard));
                }
            }

            var tensors = ReadShards(inputFull, shards);
            CheckAgainstIndex(indexPath, weightMap, tensors);
            return new Checkpoint(inputFull, true, indexPath, shards, tensors, metadata);
        }

        if (File.Exists(Path.Combine(inputFull, SingleName)))
        {
            return new Checkpoint(inputFull, true, null, [SingleName], ReadShards(inputFull, [SingleName]), []);
        }

        throw new FileNotFoundException($"the folder '{input}' has neither {IndexName} nor {SingleName}.", Path.Combine(inputFull, SingleName));
    }

    /// <summary>Top-level files of an input folder that are neither safetensors files nor the index: copied unchanged.</summary>
    public IEnumerable<string> OtherFiles() =>
        IsFolder
            ? Directory.EnumerateFiles(Folder)
                .Select(Path.GetFileName)
                .OfType<string>()
                .Where(n => !n.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && n != IndexName)
                .Order(StringComparer.Ordinal)
            : [];

    /// <summary>Subfolders of an input folder (not copied).</summary>
    public IEnumerable<string> SubFolders() =>
        IsFolder ? Directory.EnumerateDirectories(Folder).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal) : [];

    private static List<CheckpointTensor> ReadShards(string folder, IReadOnlyList<string> shards)
    {
        var tensors = new List<CheckpointTensor>();
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string shard in shards)
        {
            using var file = SafeTensorsFile.Open(Path.Combine(folder, shard));
            foreach (string name in file.Names)
            {
                if (!seen.TryAdd(name, shard))
                {
                    throw new InvalidDataException($"{Path.Combine(folder, shard)}: tensor '{name}' is also in the shard '{seen[name]}'; a name must be in one shard only.");
                }

                tensors.Add(new CheckpointTensor(shard, file.GetInfo(name)));
            }
        }

        return tensors;
    }

    private static (Dictionary<string, string> WeightMap, Dictionary<string, JsonElement> Metadata) ReadIndex(string indexPath)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"{indexPath}: expected a JSON object with a \"weight_map\" object of tensor name → shard file.");
            }

            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                string? shard = entry.Value.ValueKind == JsonValueKind.String ? entry.Value.GetString() : null;
                if (shard == null || shard.Length == 0 || shard is "." or ".." || Path.GetFileName(shard) != shard || shard.Contains('\\'))
                {
                    throw new InvalidDataException(
                        $"{indexPath}: weight_map['{entry.Name}'] must be a shard file name in the same folder; got {entry.Value.GetRawText()}.");
                }

                if (!weightMap.TryAdd(entry.Name, shard))
                {
                    throw new InvalidDataException($"{indexPath}: weight_map lists '{entry.Name}' twice.");
                }
            }

            var metadata = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            if (root.TryGetProperty("metadata", out var meta) && meta.ValueKind == JsonValueKind.Object)
            {
                foreach (var entry in meta.EnumerateObject().Where(e => e.Name != "total_size"))
                {
                    metadata[entry.Name] = entry.Value.Clone();
                }
            }

            return (weightMap, metadata);
        }
    }

    private static void CheckAgainstIndex(string indexPath, Dictionary<string, string> weightMap, List<CheckpointTensor> tensors)
    {
        var actual = tensors.ToDictionary(t => t.Name, t => t.Shard, StringComparer.Ordinal);
        foreach (var (name, shard) in weightMap)
        {
            if (!actual.TryGetValue(name, out string? found))
            {
                throw new InvalidDataException($"{indexPath}: tensor '{name}' is listed in shard '{shard}', but that shard has no tensor of this name.");
            }

            if (found != shard)
            {
                throw new InvalidDataException($"{indexPath}: tensor '{name}' is listed in shard '{shard}' but is in shard '{found}'.");
            }
        }

        foreach (var tensor in tensors.Where(t => !weightMap.ContainsKey(t.Name)))
        {
            throw new InvalidDataException($"{indexPath}: the shard '{tensor.Shard}' holds tensor '{tensor.Name}', which the weight_map does not list.");
        }
    }
}
