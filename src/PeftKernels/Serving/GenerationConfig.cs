using System.Text.Json;

namespace PeftKernels.Serving;

/// <summary>What a model folder says about generation: the token ids that end a reply.</summary>
public static class GenerationConfig
{
    /// <summary>
    /// The end-of-sequence token ids of a model folder: <c>eos_token_id</c> of generation_config.json, then of
    /// config.json — each an integer or a list of integers (Llama 3 lists several: <c>&lt;|end_of_text|&gt;</c> and
    /// <c>&lt;|eot_id|&gt;</c>) — united in order of first appearance. Either file, or the field, may be missing
    /// (an empty list when neither has it). Malformed JSON or a value of the wrong type throws an
    /// <see cref="InvalidDataException"/> naming the file and field.
    /// </summary>
    public static IReadOnlyList<int> EosTokenIds(string modelDir)
    {
        ArgumentNullException.ThrowIfNull(modelDir);
        var ids = new List<int>();
        foreach (string file in new[] { "generation_config.json", "config.json" })
        {
            string path = Path.Combine(modelDir, file);
            if (!File.Exists(path))
            {
                continue;
            }
            using var doc = ChatTemplate.ReadJson(path);
            if (!doc.RootElement.TryGetProperty("eos_token_id", out var field) || field.ValueKind == JsonValueKind.Null)
            {
                continue;
            }
            if (field.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var item in field.EnumerateArray())
                {
                    Add(ids, TokenId(item, $"{path}: eos_token_id[{i++}]"));
                }
            }
            else
            {
                Add(ids, TokenId(field, $"{path}: eos_token_id"));
            }
        }
        return ids;
    }

    private static void Add(List<int> ids, int id)
    {
        if (!ids.Contains(id))
        {
            ids.Add(id);
        }
    }

    private static int TokenId(JsonElement e, string where) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0
            ? id
            : throw new InvalidDataException($"{where} must be a non-negative integer token id (or a list of them); found {(e.ValueKind == JsonValueKind.Number ? e.GetRawText() : e.ValueKind.ToString())}.");
}
