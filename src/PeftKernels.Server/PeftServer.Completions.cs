// POST /v1/completions and /v1/chat/completions: gate (authenticate, route, rate limit), parse, resolve
// the model (the base by its own name or empty, an adapter, or a per-request mix), check capacity (429
// when the engine's queue is over MaxQueuedRequests) and the context (400 when the prompt, or the prompt
// plus max_tokens, does not fit), then generate with GenerationStream and answer in OpenAI's shape, all
// at once or as server-sent events (chunks, a usage chunk when stream_options.include_usage, then
// "data: [DONE]"). The request's abort token (client gone, or server stop past its grace period) ends
// the stream, which cancels the engine sequence and frees its KV blocks.
using System.Diagnostics;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PeftKernels.Engine;
using PeftKernels.Serving;

namespace PeftKernels.Server;

public sealed partial class PeftServer
{
    /// <summary>Completion tokens when a completion request gives no max_tokens (OpenAI's default).</summary>
    public const int DefaultCompletionTokens = 16;

    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    private async Task Generate(HttpContext context, bool chat)
    {
        long arrival = Stopwatch.GetTimestamp();
        var tenant = Authenticate(context);
        var request = OpenAiRequest.Parse(await ReadBody(context).ConfigureAwait(false), chat);
        var (model, adapter) = Resolve(tenant, request);
        context.Items[ModelKey] = model;
        if (Gate != null && tenant != null)
        {
            Require(Gate.TryAcquire(tenant));
        }

        if (Engine.WaitingCount >= options.MaxQueuedRequests)
        {
            throw new ApiException(StatusCodes.Status429TooManyRequests, $"the server is over capacity ({Engine.WaitingCount} requests waiting); retry later.", code: "server_overloaded")
            {
                RetryAfter = TimeSpan.FromSeconds(1),
            };
        }

        int[] prompt = PromptOf(request, chat);
        int limit = Engine.MaxSequenceLength;
        if (prompt.Length >= limit)
        {
            throw ApiException.BadRequest($"the prompt has {prompt.Length} tokens; the model's context length is {limit}, leaving no room to generate.",
                chat ? "messages" : "prompt", "context_length_exceeded");
        }

        int room = limit - prompt.Length;
        if (request.MaxTokens > room)
        {
            throw ApiException.BadRequest($"max_tokens ({request.MaxTokens}) plus the prompt's {prompt.Length} tokens exceed the model's context length of {limit}; "
                + $"at most {room} tokens can be generated.", "max_tokens", "context_length_exceeded");
        }

        int maxTokens = request.MaxTokens ?? (chat ? room : Math.Min(DefaultCompletionTokens, room));
        var sampling = new SamplingParams(request.Temperature, request.TopP, request.TopK, request.Seed, Model.EosTokenIds, maxTokens);
        var generation = new GenerationRequest(prompt, adapter, sampling, request.Stop);
        var updates = Run(generation, model, arrival, Aborted(context));
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        if (request.Stream)
        {
            await Stream(context, updates, id, model, chat, request.IncludeUsage).ConfigureAwait(false);
        }
        else
        {
            await Whole(context, updates, id, model, chat).ConfigureAwait(false);
        }
    }

    /// <summary>The prompt's token ids: rendered messages, encoded text, or the ids given (checked against the vocabulary).</summary>
    private int[] PromptOf(OpenAiRequest request, bool chat)
    {
        if (chat)
        {
            var render = Model.ChatRenderer ?? throw ApiException.BadRequest(
                $"model '{Model.Name}' has no chat template (tokenizer_config.json's chat_template); use /v1/completions with a prompt.", "messages");
            string text;
            try
            {
                text = render(request.Messages!);
            }
            catch (ChatTemplateException ex)
            {
                // raise_exception(...) is how templates reject a conversation (say, roles that do not alternate).
                throw ApiException.BadRequest(ex.RaisedMessage ?? $"the model's chat template cannot render these messages: {ex.Message}", "messages");
            }

            return PromptTokens.Encode(Model.Tokenizer, text);
        }

        if (request.PromptIds is { } ids)
        {
            int vocab = Model.Model.Config.VocabSize;
            for (int i = 0; i < ids.Length; i++)
            {
                if (ids[i] >= vocab)
                {
                    throw ApiException.BadRequest($"prompt: token id {ids[i]} at position {i} is outside the vocabulary [0, {vocab}).", "prompt");
                }
            }

            return ids;
        }

        int[] encoded = PromptTokens.Encode(Model.Tokenizer, request.PromptText!);
        return encoded.Length > 0 ? encoded : throw ApiException.BadRequest("prompt encodes to no tokens.", "prompt");
    }

    /// <summary>The model name the response reports and the engine adapter (null: base) for the request, after the gate's routing and any mix.</summary>
    private (string Model, string? Adapter) Resolve(TenantIdentity? tenant, OpenAiRequest request)
    {
        string? requested = request.Model;
        if (Gate != null && tenant != null)
        {
            var routed = Gate.Route(tenant, requested, request.User);
            Require(routed);
            requested = routed.Model ?? requested;
        }

        string model = string.IsNullOrEmpty(requested) ? Model.Name : requested;
        string? adapter = model == Model.Name ? null : model;
        if (adapter != null && (adapter.StartsWith(AdapterMixer.MixPrefix, StringComparison.Ordinal) || !Engine.Adapters.Names.Contains(adapter, StringComparer.Ordinal)))
        {
            throw ApiException.UnknownModel(model);
        }

        var parts = MixParts(tenant, request);
        if (parts == null)
        {
            return (model, adapter);
        }

        string field = request.Lora != null ? "lora" : "merged_adapters";
        if (adapter != null)
        {
            throw ApiException.BadRequest($"{field}: model names adapter '{adapter}'; a request with a mix must name the base model '{Model.Name}' (or none).", field);
        }

        if (parts.Count == 0)
        {
            return (model, null); // every scale 0: the base model
        }

        try
        {
            return (model, mixer.Mix(parts));
        }
        catch (KeyNotFoundException e)
        {
            throw new ApiException(StatusCodes.Status404NotFound, $"{field}: {e.Message}", field, "model_not_found");
        }
        catch (Exception e) when (e is NotSupportedException or ArgumentException or InvalidDataException or IOException or InvalidOperationException)
        {
            throw ApiException.BadRequest($"{field}: {e.Message}", field);
        }
    }

    /// <summary>The mix of a request ("lora" or "merged_adapters"; each part routed and scoped by the gate), null when it gives none.</summary>
    private List<(string Adapter, double Weight)>? MixParts(TenantIdentity? tenant, OpenAiRequest request)
    {
        if (request.Lora != null && request.Merged != null)
        {
            throw ApiException.BadRequest("give at most one of \"lora\" and \"merged_adapters\".", "lora");
        }

        List<(string Name, double Weight)>? parts = null;
        if (request.Lora != null)
        {
            var names = AdapterNames;
            parts = [];
            foreach (var (id, name, scale) in request.Lora)
            {
                string adapter = name ?? (id < names.Count ? names[id!.Value]
                    : throw new ApiException(StatusCodes.Status404NotFound, $"lora: id {id} is not an adapter index; the server has {names.Count} adapters (GET /v1/models lists them in id order).", "lora", "model_not_found"));
                if (scale != 0)
                {
                    parts.Add((adapter, scale));
                }
            }
        }
        else if (request.Merged != null)
        {
            parts = [.. request.Merged.Where(p => p.Weight != 0)];
        }

        if (parts == null || Gate == null || tenant == null)
        {
            return parts;
        }

        return [.. parts.Select(p =>
        {
            var routed = Gate.Route(tenant, p.Name, request.User);
            Require(routed);
            return (routed.Model ?? p.Name, p.Weight);
        })];
    }

    /// <summary>The generation's updates, reporting tokens and latencies to the observer.</summary>
    private async IAsyncEnumerable<GenerationUpdate> Run(GenerationRequest generation, string model, long arrival,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        IAsyncEnumerable<GenerationUpdate> updates;
        try
        {
            updates = GenerationStream.Run(Engine, Model.Tokenizer, generation, cancellationToken);
        }
        catch (KeyNotFoundException)
        {
            throw ApiException.UnknownModel(model); // unloaded between the check and the submission
        }
        catch (ArgumentException e)
        {
            throw ApiException.BadRequest(e.Message);
        }

        int tokens = 0;
        long last = arrival;
        await using var it = updates.GetAsyncEnumerator(cancellationToken);
        while (true)
        {
            try
            {
                if (!await it.MoveNextAsync().ConfigureAwait(false))
                {
                    yield break;
                }
            }
            catch (GenerationFailedException) when (generation.Adapter != null && !Engine.Adapters.Names.Contains(generation.Adapter, StringComparer.Ordinal))
            {
                throw ApiException.UnknownModel(model);
            }

            var update = it.Current;
            if (Observer != null && update.Tokens > tokens)
            {
                long now = Stopwatch.GetTimestamp();
                if (tokens == 0)
                {
                    Observer.FirstToken(model, Stopwatch.GetElapsedTime(arrival, now));
                    tokens = 1;
                }

                var gap = Stopwatch.GetElapsedTime(last, now) / Math.Max(1, update.Tokens - tokens);
                for (; tokens < update.Tokens; tokens++)
                {
                    Observer.InterToken(model, gap);
                }

                last = now;
            }

            if (update.Usage is { } usage)
            {
                Observer?.Tokens(model, usage.PromptTokens, usage.CompletionTokens);
            }

            yield return update;
        }
    }

    private static async Task Whole(HttpContext context, IAsyncEnumerable<GenerationUpdate> updates, string id, string model, bool chat)
    {
        var text = new System.Text.StringBuilder();
        GenerationUpdate? last = null;
        await foreach (var update in updates.ConfigureAwait(false))
        {
            text.Append(update.Text);
            last = update;
        }

        await Json(context, json =>
        {
            OpenAiJson.Header(json, id, chat ? "chat.completion" : "text_completion", model);
            json.WriteStartArray("choices");
            OpenAiJson.Choice(json, chat, text.ToString(), last?.FinishReason, delta: false, firstDelta: false);
            json.WriteEndArray();
            OpenAiJson.Usage(json, last?.Usage);
        }).ConfigureAwait(false);
    }

    private static async Task Stream(HttpContext context, IAsyncEnumerable<GenerationUpdate> updates, string id, string model, bool chat, bool includeUsage)
    {
        var response = context.Response;
        string kind = chat ? "chat.completion.chunk" : "text_completion";
        await using var e = updates.GetAsyncEnumerator();
        bool any = await e.MoveNextAsync().ConfigureAwait(false); // errors before the first token still get a status and an error body
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        bool first = true;
        GenerationUsage? usage = null;
        try
        {
            while (any)
            {
                var update = e.Current;
                usage = update.Usage ?? usage;
                if (update.Text.Length > 0 || update.FinishReason != null || (chat && first))
                {
                    await Event(response, json =>
                    {
                        OpenAiJson.Header(json, id, kind, model);
                        json.WriteStartArray("choices");
                        OpenAiJson.Choice(json, chat, update.Text, update.FinishReason, delta: true, firstDelta: first);
                        json.WriteEndArray();
                        if (includeUsage)
                        {
                            json.WriteNull("usage");
                        }
                    }, context.RequestAborted).ConfigureAwait(false);
                    first = false;
                }

                any = await e.MoveNextAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is GenerationFailedException or ApiException)
        {
            byte[] error = OpenAiError.Body(ex is ApiException a ? a.Status : StatusCodes.Status500InternalServerError, ex.Message, null, null);
            await response.Body.WriteAsync((byte[])[.. "data: "u8, .. error, .. "\n\n"u8], context.RequestAborted).ConfigureAwait(false);
        }

        if (includeUsage && usage != null)
        {
            await Event(response, json =>
            {
                OpenAiJson.Header(json, id, kind, model);
                json.WriteStartArray("choices");
                json.WriteEndArray();
                OpenAiJson.Usage(json, usage);
            }, context.RequestAborted).ConfigureAwait(false);
        }

        await response.Body.WriteAsync(Done, context.RequestAborted).ConfigureAwait(false);
        await response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }

    private static async Task Event(HttpResponse response, Action<Utf8JsonWriter> body, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        buffer.Write("data: "u8);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            body(json);
            json.WriteEndObject();
        }

        buffer.Write("\n\n"u8);
        await response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), cancellationToken).ConfigureAwait(false);
        await response.Body.FlushAsync(cancellationToken).ConfigureAwait(false);
    }
}
