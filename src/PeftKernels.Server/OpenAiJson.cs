// The pieces of OpenAI's response bodies: the header (id, object, created, model), one choice (text for
// completions; message for chat; delta for chat chunks, the first of which carries the role), and usage
// {prompt_tokens, completion_tokens, total_tokens}.
using System.Text.Json;
using PeftKernels.Serving;

namespace PeftKernels.Server;

/// <summary>Writes the fields of OpenAI response bodies.</summary>
internal static class OpenAiJson
{
    public static void Header(Utf8JsonWriter json, string id, string kind, string model)
    {
        json.WriteString("id", id);
        json.WriteString("object", kind);
        json.WriteNumber("created", DateTimeOffset.UtcNow.ToUnixTimeSeconds());
        json.WriteString("model", model);
        json.WriteString("system_fingerprint", ServerInfo.Name);
    }

    public static void Choice(Utf8JsonWriter json, bool chat, string text, string? finishReason, bool delta, bool firstDelta)
    {
        json.WriteStartObject();
        json.WriteNumber("index", 0);
        if (!chat)
        {
            json.WriteString("text", text);
            json.WriteNull("logprobs");
        }
        else
        {
            json.WriteStartObject(delta ? "delta" : "message");
            if (!delta || firstDelta)
            {
                json.WriteString("role", "assistant");
            }

            if (!delta || text.Length > 0 || firstDelta)
            {
                json.WriteString("content", text);
            }

            json.WriteEndObject();
            json.WriteNull("logprobs");
        }

        if (finishReason == null)
        {
            json.WriteNull("finish_reason");
        }
        else
        {
            json.WriteString("finish_reason", finishReason);
        }

        json.WriteEndObject();
    }

    public static void Usage(Utf8JsonWriter json, GenerationUsage? usage)
    {
        if (usage == null)
        {
            json.WriteNull("usage");
            return;
        }

        json.WriteStartObject("usage");
        json.WriteNumber("prompt_tokens", usage.PromptTokens);
        json.WriteNumber("completion_tokens", usage.CompletionTokens);
        json.WriteNumber("total_tokens", usage.TotalTokens);
        json.WriteEndObject();
    }
}
