// The body of POST /v1/completions and /v1/chat/completions, read field by field from the JSON so that
// every wrong type or value is a 400 naming its field. Accepted (OpenAI, plus vLLM/llama.cpp/LoRAX
// extensions): model, prompt (a string, one string in an array, token ids, or one array of token ids),
// messages ([{role, content: string or [{type: "text", text}]}]), max_tokens / max_completion_tokens,
// temperature, top_p, top_k (-1 or 0 = off), seed, stop (string or up to 4 strings), stream,
// stream_options.include_usage, user, n (1 only), lora ([{id | name, scale}]) and merged_adapters
// ({ids, weights, merge_strategy: "linear"}). Unknown fields are ignored, as OpenAI does.
using System.Text.Json;
using PeftKernels.Serving;

namespace PeftKernels.Server;

/// <summary>A parsed completion or chat request.</summary>
internal sealed record OpenAiRequest
{
    public string? Model { get; init; }

    public string? User { get; init; }

    public string? PromptText { get; init; }

    public int[]? PromptIds { get; init; }

    public IReadOnlyList<ChatTurn>? Messages { get; init; }

    public int? MaxTokens { get; init; }

    public float Temperature { get; init; } = 1;

    public float TopP { get; init; } = 1;

    public int TopK { get; init; }

    public int? Seed { get; init; }

    public IReadOnlyList<string>? Stop { get; init; }

    public bool Stream { get; init; }

    public bool IncludeUsage { get; init; }

    /// <summary>llama.cpp's "lora": adapters by index (in /v1/models order) or name, with scales.</summary>
    public IReadOnlyList<(int? Id, string? Name, double Scale)>? Lora { get; init; }

    /// <summary>LoRAX's merged_adapters: adapter names and weights.</summary>
    public IReadOnlyList<(string Name, double Weight)>? Merged { get; init; }

    /// <summary>Parses <paramref name="body"/>; <paramref name="chat"/> selects /v1/chat/completions (messages) over /v1/completions (prompt).</summary>
    /// <exception cref="ApiException">400: malformed JSON, a wrong type or an invalid value (the field is named).</exception>
    public static OpenAiRequest Parse(ReadOnlyMemory<byte> body, bool chat)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 32 });
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw ApiException.BadRequest($"the request body must be a JSON object; got {Kind(root)}.");
            }

            var request = new OpenAiRequest
            {
                Model = String(root, "model"),
                User = String(root, "user"),
                MaxTokens = PositiveInt(root, "max_completion_tokens") ?? PositiveInt(root, "max_tokens"),
                Temperature = Number(root, "temperature", 0, float.PositiveInfinity, "must be finite and >= 0") ?? 1,
                TopP = Number(root, "top_p", float.Epsilon, 1, "must be in (0, 1]") ?? 1,
                TopK = TopKOf(root),
                Seed = SeedOf(root),
                Stop = StopOf(root),
                Stream = Bool(root, "stream") ?? false,
                IncludeUsage = IncludeUsageOf(root),
                Lora = LoraOf(root),
                Merged = MergedOf(root),
            };
            if (Get(root, "n") is { } n && !(n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out int count) && count == 1))
            {
                throw ApiException.BadRequest($"n: only n = 1 is supported; got {n.GetRawText()}.", "n");
            }

            return chat ? request with { Messages = MessagesOf(root) } : PromptOf(root, request);
        }
    }

    private static JsonElement? Get(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };

    private static ApiException WrongType(string field, string expected, JsonElement got) =>
        ApiException.BadRequest($"{field} must be {expected}; got {Kind(got)}.", field);

    private static string? String(JsonElement root, string field) => Get(root, field) is not { } v ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw WrongType(field, "a string", v);

    private static bool? Bool(JsonElement root, string field) => Get(root, field) is not { } v ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw WrongType(field, "a boolean", v);

    private static int? PositiveInt(JsonElement root, string field)
    {
        if (Get(root, field) is not { } v)
        {
            return null;
        }

        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long value))
        {
            throw WrongType(field, "an integer", v);
        }

        return value >= 1 ? (int)Math.Min(value, int.MaxValue) : throw ApiException.BadRequest($"{field} must be at least 1; got {value}.", field);
    }

    private static float? Number(JsonElement root, string field, float min, float max, string rule)
    {
        if (Get(root, field) is not { } v)
        {
            return null;
        }

        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double value))
        {
            throw WrongType(field, "a number", v);
        }

        return value >= min && value <= max && double.IsFinite(value) ? (float)value
            : throw ApiException.BadRequest($"{field} {rule}; got {v.GetRawText()}.", field);
    }

    private static int TopKOf(JsonElement root)
    {
        if (Get(root, "top_k") is not { } v)
        {
            return 0;
        }

        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int k))
        {
            throw WrongType("top_k", "an integer", v);
        }

        return k is -1 or 0 ? 0 : k > 0 ? k : throw ApiException.BadRequest($"top_k must be -1 or 0 (off) or positive; got {k}.", "top_k");
    }

    private static int? SeedOf(JsonElement root)
    {
        if (Get(root, "seed") is not { } v)
        {
            return null;
        }

        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long seed) ? unchecked((int)(seed ^ (seed >> 32))) : throw WrongType("seed", "an integer", v);
    }

    private static IReadOnlyList<string>? StopOf(JsonElement root)
    {
        if (Get(root, "stop") is not { } v)
        {
            return null;
        }

        List<string> stops = v.ValueKind == JsonValueKind.String ? [v.GetString()!]
            : v.ValueKind == JsonValueKind.Array ? [.. v.EnumerateArray().Select(s => s.ValueKind == JsonValueKind.String ? s.GetString()! : throw WrongType("stop", "a string or an array of strings", s))]
            : throw WrongType("stop", "a string or an array of strings", v);
        if (stops.Count > StopStrings.MaxCount)
        {
            throw ApiException.BadRequest($"stop: at most {StopStrings.MaxCount} stop strings; got {stops.Count}.", "stop");
        }

        return stops.Any(string.IsNullOrEmpty) ? throw ApiException.BadRequest("stop: a stop string must not be empty.", "stop") : stops;
    }

    private static bool IncludeUsageOf(JsonElement root)
    {
        if (Get(root, "stream_options") is not { } v)
        {
            return false;
        }

        return v.ValueKind == JsonValueKind.Object ? Bool(v, "include_usage") ?? false : throw WrongType("stream_options", "an object", v);
    }

    private static OpenAiRequest PromptOf(JsonElement root, OpenAiRequest request)
    {
        if (Get(root, "prompt") is not { } v)
        {
            throw ApiException.BadRequest("prompt is required.", "prompt");
        }

        const string Expected = "a string, an array of one string, an array of token ids, or an array of one array of token ids";
        if (v.ValueKind == JsonValueKind.String)
        {
            return request with { PromptText = v.GetString() };
        }

        if (v.ValueKind != JsonValueKind.Array)
        {
            throw WrongType("prompt", Expected, v);
        }

        int length = v.GetArrayLength();
        if (length == 0)
        {
            throw ApiException.BadRequest("prompt must not be empty.", "prompt");
        }

        var first = v[0];
        if (first.ValueKind == JsonValueKind.Number)
        {
            return request with { PromptIds = Ids(v) };
        }

        if (length != 1)
        {
            throw ApiException.BadRequest($"prompt: only one prompt per request is supported; got {length}.", "prompt");
        }

        return first.ValueKind == JsonValueKind.String ? request with { PromptText = first.GetString() }
            : first.ValueKind == JsonValueKind.Array ? request with { PromptIds = Ids(first) }
            : throw WrongType("prompt", Expected, first);
    }

    private static int[] Ids(JsonElement array)
    {
        var ids = new int[array.GetArrayLength()];
        int i = 0;
        foreach (var e in array.EnumerateArray())
        {
            ids[i++] = e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 ? id
                : throw ApiException.BadRequest($"prompt: token ids must be integers >= 0; got {e.GetRawText()} at position {i - 1}.", "prompt");
        }

        return ids.Length > 0 ? ids : throw ApiException.BadRequest("prompt must not be empty.", "prompt");
    }

    private static List<ChatTurn> MessagesOf(JsonElement root)
    {
        if (Get(root, "messages") is not { } v)
        {
            throw ApiException.BadRequest("messages is required.", "messages");
        }

        if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() == 0)
        {
            throw ApiException.BadRequest($"messages must be a non-empty array of messages; got {Kind(v)}.", "messages");
        }

        var turns = new List<ChatTurn>();
        foreach (var m in v.EnumerateArray())
        {
            string at = $"messages[{turns.Count}]";
            if (m.ValueKind != JsonValueKind.Object)
            {
                throw WrongType(at, "an object", m);
            }

            string role = String(m, "role") ?? throw ApiException.BadRequest($"{at}.role is required.", "messages");
            turns.Add(new ChatTurn(role, ContentOf(m, at)));
        }

        return turns;
    }

    private static string ContentOf(JsonElement message, string at)
    {
        if (Get(message, "content") is not { } c)
        {
            return "";
        }

        if (c.ValueKind == JsonValueKind.String)
        {
            return c.GetString()!;
        }

        if (c.ValueKind != JsonValueKind.Array)
        {
            throw WrongType($"{at}.content", "a string or an array of text parts", c);
        }

        var text = new System.Text.StringBuilder();
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || String(part, "type") != "text")
            {
                throw ApiException.BadRequest($"{at}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported.", "messages");
            }

            text.Append(String(part, "text"));
        }

        return text.ToString();
    }

    private static List<(int? Id, string? Name, double Scale)>? LoraOf(JsonElement root)
    {
        if (Get(root, "lora") is not { } v)
        {
            return null;
        }

        if (v.ValueKind != JsonValueKind.Array)
        {
            throw WrongType("lora", "an array of {\"id\" or \"name\", \"scale\"}", v);
        }

        var list = new List<(int?, string?, double)>();
        foreach (var e in v.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Object)
            {
                throw WrongType("lora", "an array of {\"id\" or \"name\", \"scale\"}", e);
            }

            int? id = Get(e, "id") is { } i ? i.ValueKind == JsonValueKind.Number && i.TryGetInt32(out int n) && n >= 0 ? n : throw WrongType("lora[].id", "an integer >= 0", i) : null;
            string? name = String(e, "name");
            if ((id == null) == (name == null))
            {
                throw ApiException.BadRequest("lora: each entry needs exactly one of \"id\" and \"name\".", "lora");
            }

            double scale = Get(e, "scale") is { } s ? s.ValueKind == JsonValueKind.Number && double.IsFinite(s.GetDouble()) ? s.GetDouble() : throw WrongType("lora[].scale", "a finite number", s) : 1;
            list.Add((id, name, scale));
        }

        return list;
    }

    private static List<(string, double)>? MergedOf(JsonElement root)
    {
        if (Get(root, "merged_adapters") is not { } v)
        {
            return null;
        }

        if (v.ValueKind != JsonValueKind.Object)
        {
            throw WrongType("merged_adapters", "an object {\"ids\", \"weights\", \"merge_strategy\"}", v);
        }

        string strategy = String(v, "merge_strategy") ?? "linear";
        if (strategy != "linear")
        {
            throw ApiException.BadRequest($"merged_adapters.merge_strategy: only \"linear\" is supported; got \"{strategy}\".", "merged_adapters");
        }

        if (Get(v, "ids") is not { ValueKind: JsonValueKind.Array } a)
        {
            throw ApiException.BadRequest("merged_adapters.ids must be an array of adapter names.", "merged_adapters");
        }

        List<string> ids = [.. a.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw WrongType("merged_adapters.ids", "an array of adapter names", e))];
        List<double> weights = Get(v, "weights") is { ValueKind: JsonValueKind.Array } w
            ? [.. w.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && double.IsFinite(e.GetDouble()) ? e.GetDouble() : throw WrongType("merged_adapters.weights", "an array of finite numbers", e))]
            : [.. ids.Select(_ => 1.0)];
        if (ids.Count == 0 || weights.Count != ids.Count)
        {
            throw ApiException.BadRequest($"merged_adapters: ids ({ids.Count}) must be non-empty and weights ({weights.Count}) must have one weight per id.", "merged_adapters");
        }

        return [.. ids.Zip(weights)];
    }
}
