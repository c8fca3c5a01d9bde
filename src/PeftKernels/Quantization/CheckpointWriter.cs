// The output side of a whole-checkpoint conversion. Every file (safetensors shard, copied
// config/tokenizer file, index) is first written completely under a hidden temporary name in
// the output folder; only when all of them exist are they renamed into place, in the order
// staged, so the index, staged last, appears last. A failure before that point deletes the
// temporaries and leaves the output folder as it was.
// A writer that owns its folder (a model folder, not the folder of a single output file) also
// removes the model files of an earlier output there that it did not write again, so that what
// the folder means is what was just written: an old index goes first (before the renames: the
// loader prefers an index to model.safetensors), then, after the renames, old weight files with a
// Hugging Face name (model*.safetensors, pytorch_model*.bin and their indexes), config.json,
// generation_config.json and tokenizer files. Other files and subfolders are left alone.
using System.Text.Json;
using System.Text.RegularExpressions;
using PeftKernels.IO;

namespace PeftKernels.Quantization;

/// <summary>Stages output files in one folder and renames them into place together.</summary>
internal sealed class CheckpointWriter : IDisposable
{
    private static readonly Regex ModelFileName = new(
        @"^(model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?"
        + @"|config\.json|generation_config\.json|tokenizer\.json|tokenizer\.model|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json"
        + @"|vocab\.json|merges\.txt)$",
        RegexOptions.CultureInvariant);

    private readonly string folder;
    private readonly List<(string Temporary, string Final)> staged = [];
    private readonly bool createdFolder;
    private readonly bool ownsFolder;
    private bool committed;

    /// <summary>A writer into <paramref name="folder"/>; <paramref name="ownsFolder"/>: the folder is a model folder, whose stale model files Commit removes.</summary>
    public CheckpointWriter(string folder, bool ownsFolder = false)
    {
        this.folder = folder;
        this.ownsFolder = ownsFolder;
        createdFolder = !Directory.Exists(folder);
        Directory.CreateDirectory(folder);
    }

    /// <summary>Whether <paramref name="fileName"/> is a name a Hugging Face model folder gives its weights, index, config or tokenizer.</summary>
    internal static bool IsModelFileName(string fileName) => ModelFileName.IsMatch(fileName);

    /// <summary>Writes a safetensors file that will become <paramref name="fileName"/>.</summary>
    public void StageSafeTensors(string fileName, IReadOnlyList<SafeTensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        string temporary = Reserve(fileName);
        SafeTensorsWriter.Write(temporary, tensors, metadata.Count == 0 ? null : metadata);
    }

    /// <summary>A temporary path to write completely; it becomes <paramref name="fileName"/> on commit.</summary>
    public string StagePath(string fileName) => Reserve(fileName);

    /// <summary>Copies <paramref name="source"/> byte for byte to what will become <paramref name="fileName"/>.</summary>
    public void StageCopy(string source, string fileName)
    {
        string temporary = Reserve(fileName);
        AtomicFile.Write(temporary, stream =>
        {
            using var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read);
            input.CopyTo(stream);
        });
    }

    /// <summary>
    /// Writes a Hugging Face index: {"metadata": {..., "total_size": N}, "weight_map": {tensor: shard}},
    /// two-space indented with sorted keys, as transformers' save_pretrained writes it.
    /// </summary>
    public void StageIndex(string fileName, IReadOnlyDictionary<string, string> weightMap, long totalSize,
        IReadOnlyDictionary<string, JsonElement> extraMetadata)
    {
        string temporary = Reserve(fileName);
        AtomicFile.Write(temporary, stream =>
        {
            using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, IndentSize = 2 });
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            foreach (var (key, value) in extraMetadata.OrderBy(e => e.Key, StringComparer.Ordinal))
            {
                json.WritePropertyName(key);
                value.WriteTo(json);
            }

            json.WriteNumber("total_size", totalSize);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (name, shard) in weightMap.OrderBy(e => e.Key, StringComparer.Ordinal))
            {
                json.WriteString(name, shard);
            }

            json.WriteEndObject();
            json.WriteEndObject();
            json.Flush();
            stream.WriteByte((byte)'\n');
        });
    }

    /// <summary>Renames every staged file into place, in staging order; returns the final paths.</summary>
    public IReadOnlyList<string> Commit()
    {
        var written = staged.Select(s => s.Final).ToHashSet(StringComparer.Ordinal);
        var stale = ownsFolder
            ? Directory.EnumerateFiles(folder).Where(f => !written.Contains(f) && IsModelFileName(Path.GetFileName(f))).Order(StringComparer.Ordinal).ToList()
            : [];
        foreach (string index in stale.Where(f => f.EndsWith(".index.json", StringComparison.Ordinal)))
        {
            File.Delete(index);
        }

        var done = new List<string>();
        foreach (var (temporary, final) in staged)
        {
            File.Move(temporary, final, overwrite: true);
            done.Add(final);
        }

        staged.Clear();
        committed = true;
        foreach (string file in stale.Where(File.Exists))
        {
            File.Delete(file);
        }

        return done;
    }

    /// <summary>Deletes whatever was staged and not committed, and the output folder if this writer created it for nothing.</summary>
    public void Dispose()
    {
        foreach (var (temporary, _) in staged)
        {
            if (File.Exists(temporary))
            {
                File.Delete(temporary);
            }
        }

        staged.Clear();
        if (createdFolder && !committed && Directory.Exists(folder) && !Directory.EnumerateFileSystemEntries(folder).Any())
        {
            Directory.Delete(folder);
        }
    }

    private string Reserve(string fileName)
    {
        string final = Path.Combine(folder, fileName);
        if (staged.Any(s => s.Final == final))
        {
            throw new InvalidOperationException($"'{final}' is staged twice.");
        }

        string temporary = Path.Combine(folder, $".{fileName}.{Guid.NewGuid():N}.staged");
        staged.Add((temporary, final));
        return temporary;
    }
}
