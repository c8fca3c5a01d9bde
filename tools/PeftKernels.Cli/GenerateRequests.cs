// The requests file of `peft generate --requests FILE`: JSON Lines, one request object a line, blank
// lines skipped. Fields (null = absent):
//   "prompt" (text, encoded with the model's tokenizer after BOS, as --prompt) or "prompt_tokens" (ids) — exactly one;
//   "adapter" (PEFT adapter folder; relative paths against the current directory; absent = the base model);
//   "max_new_tokens" (default --max-new-tokens), "temperature", "top_p", "top_k", "seed" (defaults: the
//   command's options), "stop_token_ids" (default: the model's EOS ids).
// The whole file is checked before anything runs: every problem names the line, the field and what was
// expected (unknown fields included — a typo silently ignored would run the wrong job), ids are checked
// against the vocabulary and prompts against max_position_embeddings; the first few problems are shown.
using System.Globalization;
using System.Text.Json;
using PeftKernels.Engine;
using PeftKernels.IO;

namespace PeftKernels.Cli;

/// <summary>One checked request of a requests file.</summary>
/// <param name="Line">Its 1-based line number.</param>
/// <param name="Prompt">The prompt token ids.</param>
/// <param name="TextPrompt">The prompt was given as text (the output then holds the decoded text too).</param>
/// <param name="AdapterFolder">The adapter folder as a full path, or null for the base model.</param>
/// <param name="Sampling">Sampling settings, max tokens and stop ids.</param>
internal sealed record GenerateRequest(int Line, int[] Prompt, bool TextPrompt, string? AdapterFolder, SamplingParams Sampling);

/// <summary>What a request takes when it leaves a field out: the command's options and the model's EOS ids.</summary>
internal sealed record RequestDefaults(int? MaxNewTokens, float Temperature, float TopP, int TopK, int Seed, IReadOnlyList<int>? StopTokenIds);

/// <summary>Reads and checks a requests file (JSON Lines).</summary>
internal static class GenerateRequests
{
    /// <summary>The fields a request may hold.</summary>
    internal static readonly string[] Fields = ["prompt", "prompt_tokens", "adapter", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop_token_ids"];

    /// <summary>Every request of <paramref name="path"/>, checked; throws with every problem (the first few) when any line is bad.</summary>
    /// <exception cref="InvalidDataException">A line is bad, or the file holds no request.</exception>
    internal static List<GenerateRequest> Read(string path, RequestDefaults defaults, Func<string, int[]> encode, int vocab, int maxPositions)
    {
        var requests = new List<GenerateRequest>();
        var problems = new List<string>();
        int line = 0;
        foreach (string text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text))
            {
                continue;
            }

            try
            {
                requests.Add(Parse(text, line, defaults, encode, vocab, maxPositions));
            }
            catch (RequestException e)
            {
                problems.Add($"line {line}: {e.Message}");
            }
        }

        if (problems.Count > 0)
        {
            throw new InvalidDataException($"{path}: {ProblemList.Count(problems, "bad request")}");
        }

        if (requests.Count == 0)
        {
            throw new InvalidDataException($"{path}: the file holds no request (one JSON object a line).");
        }

        return requests;
    }

    private static GenerateRequest Parse(string text, int line, RequestDefaults defaults, Func<string, int[]> encode, int vocab, int maxPositions)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new RequestException($"not valid JSON: {e.Message}");
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new RequestException($"expected a JSON object, got {Show(root)}");
            }

            var fields = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            foreach (var property in root.EnumerateObject())
            {
                if (!Fields.Contains(property.Name, StringComparer.Ordinal))
                {
                    throw new RequestException($"unknown field '{property.Name}' (a request takes {string.Join(", ", Fields)})");
                }

                if (!fields.TryAdd(property.Name, property.Value))
                {
                    throw new RequestException($"field '{property.Name}' is given twice");
                }
            }

            foreach (var key in fields.Where(f => f.Value.ValueKind == JsonValueKind.Null).Select(f => f.Key).ToList())
            {
                fields.Remove(key);
            }

            bool hasText = fields.TryGetValue("prompt", out var promptText), hasIds = fields.TryGetValue("prompt_tokens", out var promptIds);
            if (hasText == hasIds)
            {
                throw new RequestException($"prompt, prompt_tokens: give exactly one of them ({(hasText ? "both" : "neither")} given)");
            }

            int[] prompt;
            if (hasText)
            {
                if (promptText.ValueKind != JsonValueKind.String)
                {
                    throw new RequestException($"prompt: expected a string, got {Show(promptText)}");
                }

                prompt = encode(promptText.GetString()!);
                if (prompt.Length == 0)
                {
                    throw new RequestException("prompt: the text encodes to no tokens");
                }
            }
            else
            {
                prompt = TokenIds(promptIds, "prompt_tokens", vocab);
                if (prompt.Length == 0)
                {
                    throw new RequestException("prompt_tokens: expected at least one token id, got []");
                }
            }

            if (prompt.Length >= maxPositions)
            {
                throw new RequestException(string.Create(CultureInfo.InvariantCulture,
                    $"{(hasText ? "prompt" : "prompt_tokens")}: the prompt has {prompt.Length} tokens; the model's max_position_embeddings is {maxPositions}, so at most {maxPositions - 1} leave room to generate"));
            }

            string? adapter = null;
            if (fields.TryGetValue("adapter", out var a))
            {
                adapter = Adapter(a);
            }

            int maxNew = fields.TryGetValue("max_new_tokens", out var m) ? Integer(m, "max_new_tokens", 0, "an integer >= 0")
                : defaults.MaxNewTokens ?? throw new RequestException("max_new_tokens: missing, and no --max-new-tokens default was given");
            float temperature = fields.TryGetValue("temperature", out var t) ? Number(t, "temperature", v => v >= 0, "a finite number >= 0") : defaults.Temperature;
            float topP = fields.TryGetValue("top_p", out var p) ? Number(p, "top_p", v => v > 0 && v <= 1, "a number in (0, 1]") : defaults.TopP;
            int topK = fields.TryGetValue("top_k", out var k) ? Integer(k, "top_k", 0, "an integer >= 0 (0 = off)") : defaults.TopK;
            int seed = fields.TryGetValue("seed", out var s) ? Integer(s, "seed", int.MinValue, "a 32-bit integer") : defaults.Seed;
            var stops = fields.TryGetValue("stop_token_ids", out var st) ? TokenIds(st, "stop_token_ids", vocab) : defaults.StopTokenIds;
            return new GenerateRequest(line, prompt, hasText, adapter, new SamplingParams(temperature, topP, topK, seed, stops, maxNew));
        }
    }

    private static string Adapter(JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.String || value.GetString()!.Length == 0)
        {
            throw new RequestException($"adapter: expected a PEFT adapter folder path (a non-empty string) or null, got {Show(value)}");
        }

        string given = value.GetString()!;
        string folder;
        try
        {
            folder = Path.GetFullPath(given);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new RequestException($"adapter: '{given}' is not a valid path: {e.Message}");
        }

        if (!File.Exists(Path.Combine(folder, Peft.Lora.ConfigFile)) || !File.Exists(Path.Combine(folder, Peft.Lora.WeightsFile)))
        {
            throw new RequestException($"adapter: '{given}' is not a PEFT adapter folder: {folder} needs {Peft.Lora.ConfigFile} and {Peft.Lora.WeightsFile}");
        }

        return folder;
    }

    private static int[] TokenIds(JsonElement value, string field, int vocab)
    {
        if (value.ValueKind != JsonValueKind.Array)
        {
            throw new RequestException($"{field}: expected an array of integer token ids, got {Show(value)}");
        }

        var ids = new int[value.GetArrayLength()];
        int i = 0;
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int id))
            {
                throw new RequestException(string.Create(CultureInfo.InvariantCulture, $"{field}: item {i} is {Show(item)}; expected an integer token id"));
            }

            if (id < 0 || id >= vocab)
            {
                throw new RequestException(string.Create(CultureInfo.InvariantCulture, $"{field}: token id {id} at position {i} is outside the vocabulary [0, {vocab})"));
            }

            ids[i++] = id;
        }

        return ids;
    }

    private static int Integer(JsonElement value, string field, int min, string expected)
    {
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out int v) || v < min)
        {
            throw new RequestException($"{field}: expected {expected}, got {Show(value)}");
        }

        return v;
    }

    private static float Number(JsonElement value, string field, Func<double, bool> ok, string expected)
    {
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out double v) || !double.IsFinite(v) || !float.IsFinite((float)v) || !ok(v))
        {
            throw new RequestException($"{field}: expected {expected}, got {Show(value)}");
        }

        return (float)v;
    }

    /// <summary>The JSON text of a value, cut to a readable length.</summary>
    private static string Show(JsonElement value)
    {
        string raw = value.GetRawText();
        return raw.Length <= 40 ? raw : raw[..40] + "…";
    }

    /// <summary>A problem of one line (the caller adds the line number).</summary>
    private sealed class RequestException(string message) : Exception(message);
}
