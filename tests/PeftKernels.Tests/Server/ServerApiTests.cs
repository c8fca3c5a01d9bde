// The OpenAI-compatible API over real HTTP on loopback: completions and chat (all at once and streamed),
// through raw HTTP, the official OpenAI .NET client and Microsoft.Extensions.AI.OpenAI's IChatClient;
// the model list; each answer checked against the tiny model's own greedy generation.
using System.ClientModel;
using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using PeftKernels.Serving;

namespace PeftKernels.Tests.Server;

public sealed class ServerApiTests
{
    private static OpenAIClient Client(ServerFixture f) =>
        new(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(f.Url, "v1") });

    [Fact]
    public async Task Completion_MatchesGreedyGenerationOfTheBaseAndOfAnAdapter()
    {
        await using var f = await ServerFixture.Start();
        foreach (string? adapter in new[] { null, "r8", "dora" })
        {
            var (status, body) = await f.Post("/v1/completions", new { model = adapter ?? ServerFixture.BaseName, prompt = "hello world", max_tokens = 8, temperature = 0 });
            Assert.Equal(200, status);
            Assert.Equal("text_completion", body.GetProperty("object").GetString());
            Assert.StartsWith("cmpl-", body.GetProperty("id").GetString(), StringComparison.Ordinal);
            Assert.Equal(adapter ?? ServerFixture.BaseName, body.GetProperty("model").GetString());
            Assert.True(body.GetProperty("created").GetInt64() > 0);
            var choice = body.GetProperty("choices")[0];
            Assert.Equal(0, choice.GetProperty("index").GetInt32());
            Assert.Equal(f.Greedy("hello world", 8, adapter), choice.GetProperty("text").GetString());
            Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
            var usage = body.GetProperty("usage");
            Assert.Equal(11, usage.GetProperty("prompt_tokens").GetInt32());
            Assert.Equal(8, usage.GetProperty("completion_tokens").GetInt32());
            Assert.Equal(19, usage.GetProperty("total_tokens").GetInt32());
        }
    }

    [Fact]
    public async Task Completion_AcceptsEveryPromptShape_AndEndsAtAStopStringWithoutReturningIt()
    {
        await using var f = await ServerFixture.Start();
        int[] ids = ServerFixture.Tokenizer.Encode("abc");
        string expected = f.Greedy("abc", 6, "r1");
        foreach (object prompt in new object[] { "abc", new[] { "abc" }, ids, new[] { ids } })
        {
            var (status, body) = await f.Post("/v1/completions", new { model = "r1", prompt, max_tokens = 6, temperature = 0, unknown_field = new { x = 1 } });
            Assert.Equal(200, status);
            Assert.Equal(expected, body.GetProperty("choices")[0].GetProperty("text").GetString());
        }

        string longer = f.Greedy("abc", 20, "r1");
        string stop = longer.Substring(3, 2);
        int cut = longer.IndexOf(stop, StringComparison.Ordinal);
        var (s, b) = await f.Post("/v1/completions", new { model = "r1", prompt = "abc", max_tokens = 20, temperature = 0, stop = new[] { "zzzz", stop } });
        Assert.Equal(200, s);
        Assert.Equal(longer[..cut], b.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", b.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.True(b.GetProperty("usage").GetProperty("completion_tokens").GetInt32() <= cut + stop.Length);
    }

    [Fact]
    public async Task Streaming_SendsChunksThenUsageThenDone()
    {
        await using var f = await ServerFixture.Start();
        using var content = new StringContent(JsonSerializer.Serialize(new
        {
            model = "r32",
            prompt = "stream me",
            max_tokens = 10,
            temperature = 0,
            stream = true,
            stream_options = new { include_usage = true },
        }), System.Text.Encoding.UTF8, "application/json");
        using var response = await f.Http.PostAsync("/v1/completions", content);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        string sse = await response.Content.ReadAsStringAsync();
        var events = sse.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e, StringComparison.Ordinal));
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement).ToList();
        var usage = chunks[^1];
        Assert.Equal(0, usage.GetProperty("choices").GetArrayLength());
        Assert.Equal(10, usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(9, usage.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var texts = chunks[..^1];
        Assert.NotEmpty(texts); // tokens the engine produced while the last chunk was written are coalesced into the next
        Assert.Equal(f.Greedy("stream me", 10, "r32"), string.Concat(texts.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal("length", texts[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.All(texts[..^1], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
    }

    [Fact]
    public async Task OpenAiChatClient_CompletesAndStreams()
    {
        await using var f = await ServerFixture.Start();
        var chat = Client(f).GetChatClient("r1");
        string prompt = ServerFixture.Render([new ChatTurn("system", "be brief"), new ChatTurn("user", "hi")]);
        string expected = f.Greedy(prompt, 7, "r1");
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 7, Temperature = 0 };
        ChatCompletion completion = await chat.CompleteChatAsync([new SystemChatMessage("be brief"), new UserChatMessage("hi")], options);
        Assert.Equal(expected, completion.Content[0].Text);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(7, completion.Usage.OutputTokenCount);
        Assert.Equal(ServerFixture.Tokenizer.Encode(prompt).Length, completion.Usage.InputTokenCount);

        var text = new System.Text.StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var update in chat.CompleteChatStreamingAsync([new SystemChatMessage("be brief"), new UserChatMessage("hi")], options))
        {
            foreach (var part in update.ContentUpdate)
            {
                text.Append(part.Text);
            }

            usage = update.Usage ?? usage;
        }

        Assert.Equal(expected, text.ToString());
        Assert.NotNull(usage);
        Assert.Equal(7, usage.OutputTokenCount);
    }

    [Fact]
    public async Task MicrosoftExtensionsAiClient_OverHttp_MatchesTheInProcessEngineChatClient()
    {
        await using var f = await ServerFixture.Start();
        IChatClient http = Client(f).GetChatClient("r8").AsIChatClient();
        var options = new ChatOptions { MaxOutputTokens = 6, Temperature = 0 };
        List<Microsoft.Extensions.AI.ChatMessage> messages = [new(ChatRole.User, "what is up")];
        var remote = await http.GetResponseAsync(messages, options);
        var local = new EngineChatClient(f.Server.Engine, ServerFixture.Tokenizer, ServerFixture.Render, [], ServerFixture.BaseName);
        var inProcess = await local.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 6, Temperature = 0, ModelId = "r8" });
        Assert.Equal(f.Greedy(ServerFixture.Render([new ChatTurn("user", "what is up")]), 6, "r8"), remote.Text);
        Assert.Equal(remote.Text, inProcess.Text);
        Assert.Equal(6, remote.Usage?.OutputTokenCount);

        var streamed = new System.Text.StringBuilder();
        await foreach (var update in http.GetStreamingResponseAsync(messages, options))
        {
            streamed.Append(update.Text);
        }

        Assert.Equal(remote.Text, streamed.ToString());
    }

    [Fact]
    public async Task Models_ListsTheBaseAndEveryAdapterWithParentAndRoot()
    {
        await using var f = await ServerFixture.Start();
        using var response = await f.Http.GetAsync("/v1/models");
        var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("list", body.GetProperty("object").GetString());
        var data = body.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal([ServerFixture.BaseName, "dora", "ia3", "r1", "r32", "r8"], data.Select(m => m.GetProperty("id").GetString()));
        Assert.Equal(JsonValueKind.Null, data[0].GetProperty("parent").ValueKind);
        Assert.All(data.Skip(1), m => Assert.Equal(ServerFixture.BaseName, m.GetProperty("parent").GetString()));
        Assert.All(data, m => Assert.Equal("model", m.GetProperty("object").GetString()));
        Assert.Equal(f.Engine.Folder("r1"), data[3].GetProperty("root").GetString());

        var models = await Client(f).GetOpenAIModelClient().GetModelsAsync();
        Assert.Equal(6, models.Value.Count);
        using var health = await f.Http.GetAsync("/health");
        Assert.Equal(System.Net.HttpStatusCode.OK, health.StatusCode);
    }
}
