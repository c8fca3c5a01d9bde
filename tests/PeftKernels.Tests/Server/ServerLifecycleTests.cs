// A client that disconnects mid-stream has its engine sequence cancelled and its KV blocks freed; a stop
// answers new requests with 503 and lets running ones finish. Both need the long generation to be still
// running when the client acts: on a busy machine the tiny model can otherwise produce all its tokens
// before the first event is read, so each engine step is slowed to at least a millisecond (ObserveLogits
// runs on the engine's thread once per sequence and step).
using System.Text;
using System.Text.Json;

namespace PeftKernels.Tests.Server;

public sealed class ServerLifecycleTests
{
    private static StringContent StreamBody(int maxTokens) => new(JsonSerializer.Serialize(new
    {
        prompt = "go",
        max_tokens = maxTokens,
        temperature = 0,
        stream = true,
    }), Encoding.UTF8, "application/json");

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting until {what}");
            await Task.Delay(10);
        }
    }

    [Fact]
    public async Task ClientDisconnectingMidStream_FreesItsSequence()
    {
        await using var f = await ServerFixture.Start(longContext: true);
        var engine = f.Server.Engine;
        engine.ObserveLogits = (_, _) => Thread.Sleep(1);
        using (var client = new System.Net.Sockets.TcpClient())
        {
            // A raw socket: HttpClient would drain the rest of the response to reuse the connection instead of leaving.
            await client.ConnectAsync(f.Url.Host, f.Url.Port);
            var stream = client.GetStream();
            string body = await StreamBody(4000).ReadAsStringAsync();
            byte[] head = Encoding.ASCII.GetBytes($"POST /v1/completions HTTP/1.1\r\nHost: {f.Url.Authority}\r\nContent-Type: application/json\r\n"
                + $"Content-Length: {Encoding.UTF8.GetByteCount(body)}\r\n\r\n{body}");
            await stream.WriteAsync(head);
            var buffer = new byte[4096];
            var received = new StringBuilder();
            while (!received.ToString().Contains("data: ", StringComparison.Ordinal))
            {
                int n = await stream.ReadAsync(buffer);
                Assert.True(n > 0, "the server closed the stream");
                received.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }

            Assert.False(engine.IsIdle); // still generating (4000 tokens)
            client.Client.Close(0); // the client leaves mid-stream
        }

        await WaitUntil(() => engine.IsIdle && engine.Pool.UsedBlocks == 0 && engine.Stats.Finished == 1, "the sequence is freed");
        Assert.True(engine.Stats.TokensGenerated < 4000, $"generated {engine.Stats.TokensGenerated} tokens although the client left");
        var (status, _) = await f.Post("/v1/completions", new { prompt = "after", max_tokens = 2 });
        Assert.Equal(200, status);
    }

    [Fact]
    public async Task Stop_Answers503ToNewRequests_AndFinishesRunningOnes()
    {
        var f = await ServerFixture.Start(longContext: true);
        f.Server.Engine.ObserveLogits = (_, _) => Thread.Sleep(1);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = StreamBody(1000) };
            using var response = await f.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            string first = (await reader.ReadLineAsync())!;
            Assert.StartsWith("data: ", first, StringComparison.Ordinal);
            var stop = f.Server.StopAsync();
            var (status, body) = await f.Post("/v1/completions", new { prompt = "late", max_tokens = 2 });
            Assert.Equal(503, status);
            Assert.Equal("server_error", body.GetProperty("error").GetProperty("type").GetString());
            string rest = await reader.ReadToEndAsync();
            Assert.EndsWith("data: [DONE]\n\n", rest, StringComparison.Ordinal);
            // The writer may coalesce tokens: on a busy machine the finish can already ride in the first event.
            Assert.Contains("\"finish_reason\":\"length\"", first + rest, StringComparison.Ordinal);
            await stop;
        }
        finally
        {
            await f.DisposeAsync();
        }
    }
}
