using System.Text.Json;
using PeftKernels.Serving.Jinja;

namespace PeftKernels.Serving;

/// <summary>
/// A model's chat template — the Jinja text in its tokenizer_config.json's <c>chat_template</c> — parsed by this
/// library's Jinja-subset renderer, which renders a conversation into the prompt text the model was trained on,
/// as Hugging Face's <c>apply_chat_template</c> does (same whitespace settings and variables). The subset covers
/// the templates shipped with Llama 2, Llama 3, Mistral, Qwen2 (ChatML), Zephyr, TinyLlama and SmolLM; see
/// docs/chat-templates.md for what is supported and how anything else is refused.
/// </summary>
public sealed class ChatTemplate
{
    private readonly JinjaTemplate _template;

    private ChatTemplate(string source, JinjaTemplate template, string? bosToken, string? eosToken)
    {
        Source = source;
        _template = template;
        BosToken = bosToken;
        EosToken = eosToken;
    }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>The text of <c>bos_token</c> given to the template; null leaves it undefined.</summary>
    public string? BosToken { get; }

    /// <summary>The text of <c>eos_token</c> given to the template; null leaves it undefined.</summary>
    public string? EosToken { get; }

    /// <summary>
    /// Parses <paramref name="template"/>. A syntax error, or a construct outside the supported subset, throws a
    /// <see cref="ChatTemplateException"/> naming its line and column.
    /// </summary>
    public static ChatTemplate Parse(string template, string? bosToken = null, string? eosToken = null)
    {
        ArgumentNullException.ThrowIfNull(template);
        return new ChatTemplate(template, JinjaTemplate.Parse(template), bosToken, eosToken);
    }

    /// <summary>
    /// The chat template of a model folder: tokenizer_config.json's <c>chat_template</c> (a string, or a list of
    /// <c>{"name", "template"}</c> objects of which the one named "default" is taken), else a chat_template.jinja file;
    /// <c>bos_token</c> and <c>eos_token</c> from tokenizer_config.json (strings or <c>{"content": ...}</c> objects).
    /// Null when the folder has no template. Malformed JSON or a field of the wrong type throws an
    /// <see cref="InvalidDataException"/> naming the file and field; a template that does not parse throws a
    /// <see cref="ChatTemplateException"/> naming the file.
    /// </summary>
    public static ChatTemplate? FromModelFolder(string modelDir)
    {
        ArgumentNullException.ThrowIfNull(modelDir);
        string configPath = Path.Combine(modelDir, "tokenizer_config.json");
        string jinjaPath = Path.Combine(modelDir, "chat_template.jinja");
        string? template = null, bos = null, eos = null, source = null;
        if (File.Exists(configPath))
        {
            using var doc = ReadJson(configPath);
            var root = doc.RootElement;
            if (root.TryGetProperty("chat_template", out var field) && field.ValueKind != JsonValueKind.Null)
            {
                template = TemplateField(configPath, field);
                source = $"{configPath}: chat_template";
            }
            bos = TokenField(configPath, root, "bos_token");
            eos = TokenField(configPath, root, "eos_token");
        }
        if (template == null && File.Exists(jinjaPath))
        {
            template = File.ReadAllText(jinjaPath);
            source = jinjaPath;
        }
        if (template == null)
        {
            return null;
        }
        try
        {
            return Parse(template, bos, eos);
        }
        catch (ChatTemplateException e)
        {
            throw e.From(source!);
        }
    }

    /// <summary>
    /// The prompt text for <paramref name="messages"/>: the template rendered with <c>messages</c> (each a dict of
    /// <c>role</c> and <c>content</c>), <c>add_generation_prompt</c>, <c>bos_token</c>, <c>eos_token</c>, and
    /// <c>tools</c> and <c>documents</c> as none (as Hugging Face passes them without tools). A template's
    /// <c>raise_exception('...')</c> (for example on roles that do not alternate) throws a
    /// <see cref="ChatTemplateException"/> whose <see cref="ChatTemplateException.RaisedMessage"/> is that text.
    /// </summary>
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = new List<object?>(messages.Count);
        foreach (var turn in messages)
        {
            ArgumentNullException.ThrowIfNull(turn, nameof(messages));
            list.Add(new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = turn.Role, ["content"] = turn.Content });
        }
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = list,
            ["add_generation_prompt"] = addGenerationPrompt,
            ["tools"] = null,
            ["documents"] = null,
        };
        if (BosToken != null)
        {
            variables["bos_token"] = BosToken;
        }
        if (EosToken != null)
        {
            variables["eos_token"] = EosToken;
        }
        return _template.Render(variables);
    }

    internal static JsonDocument ReadJson(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true, MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            var kind = doc.RootElement.ValueKind;
            doc.Dispose();
            throw new InvalidDataException($"{path}: expected a JSON object; found {kind}.");
        }
        return doc;
    }

    private static string TemplateField(string path, JsonElement field)
    {
        if (field.ValueKind == JsonValueKind.String)
        {
            return field.GetString()!;
        }
        if (field.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidDataException($"{path}: chat_template must be a string or a list of {{\"name\", \"template\"}} objects; found {field.ValueKind}.");
        }
        var names = new List<string>();
        int index = 0;
        foreach (var item in field.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object
                || !item.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String
                || !item.TryGetProperty("template", out var text) || text.ValueKind != JsonValueKind.String)
            {
                throw new InvalidDataException($"{path}: chat_template[{index}] must be an object with string fields \"name\" and \"template\".");
            }
            if (name.GetString() == "default")
            {
                return text.GetString()!;
            }
            names.Add(name.GetString()!);
            index++;
        }
        throw new InvalidDataException($"{path}: chat_template lists the templates [{string.Join(", ", names)}] but none named \"default\".");
    }

    private static string? TokenField(string path, JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var field) || field.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (field.ValueKind == JsonValueKind.String)
        {
            return field.GetString();
        }
        if (field.ValueKind == JsonValueKind.Object && field.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
        {
            return content.GetString();
        }
        throw new InvalidDataException($"{path}: {name} must be a string or an object with a string \"content\"; found {field.ValueKind}.");
    }
}
