// A running PeftServer over EngineFixture's tiny Llama (vocabulary 40) and its five adapters, listening on
// 127.0.0.1 port 0, with a character tokenizer (CharTokenizer) and a one-line chat renderer, and
// reference outputs from the fixture's own model (greedy generation without the engine).
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using PeftKernels.Models;
using PeftKernels.Server;
using PeftKernels.Serving;
using PeftKernels.Testing;
using PeftKernels.Text;

namespace PeftKernels.Tests.Server;

/// <summary>Characters as tokens: id i (1..39) is Alphabet[i - 1]; id 0 decodes to nothing. Unknown characters encode as '?'.</summary>
internal sealed class CharTokenizer : ITokenizer
{
    public const string Alphabet = "abcdefghijklmnopqrstuvwxyz .,!?:;'-0123";

    public int VocabSize => Alphabet.Length + 1;

    public int? BosId => null;

    public int? EosId => null;

    public int[] Encode(string text) => [.. text.Select(c => Alphabet.Contains(c, StringComparison.Ordinal) ? Alphabet.IndexOf(c, StringComparison.Ordinal) + 1 : Alphabet.IndexOf('?', StringComparison.Ordinal) + 1)];

    public string Decode(ReadOnlySpan<int> ids)
    {
        var text = new StringBuilder();
        foreach (int id in ids)
        {
            if (id > 0 && id <= Alphabet.Length)
            {
                text.Append(Alphabet[id - 1]);
            }
        }

        return text.ToString();
    }
}

internal sealed class ServerFixture : IAsyncDisposable
{
    public const string BaseName = "tiny-base";

    /// <summary>The context length of a long-context server.</summary>
    public const int LongContext = 4096;

    private ServerFixture(EngineFixture engine, PeftServer server, Uri url)
    {
        Engine = engine;
        Server = server;
        Url = url;
        Http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(30) };
    }

    public static CharTokenizer Tokenizer { get; } = new();

    public EngineFixture Engine { get; }

    public PeftServer Server { get; }

    public Uri Url { get; }

    public HttpClient Http { get; }

    /// <summary>The chat renderer of the tests: "role: content;" per turn, then "assistant:".</summary>
    public static string Render(IReadOnlyList<ChatTurn> turns) => string.Concat(turns.Select(t => $"{t.Role}: {t.Content};")) + "assistant:";

    /// <summary>Starts a server; <paramref name="longContext"/> serves the same tiny architecture with a 4096-position context (long generations, for disconnect and stop tests).</summary>
    public static async Task<ServerFixture> Start(Func<ServeOptions, ServeOptions>? configure = null, EngineFixture? engine = null, IRequestGate? gate = null, bool longContext = false, IServerObserver? observer = null)
    {
        engine ??= new EngineFixture();
        var weights = longContext ? TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = LongContext }) : engine.NewModel();
        var model = new ServedModel(BaseName, weights, Tokenizer, [], Render);
        var options = new ServeOptions
        {
            ModelFolder = "unused",
            Host = "127.0.0.1",
            Port = 0,
            Threads = 1,
            AdaptersDir = Path.GetDirectoryName(engine.Folder("r1")),
            MaxRequestBodyBytes = 64 << 10,
            ShutdownTimeout = TimeSpan.FromSeconds(5),
        };
        var server = new PeftServer(model, configure?.Invoke(options) ?? options, gate, observer, logging => logging.SetMinimumLevel(LogLevel.None));
        var url = await server.StartAsync();
        return new ServerFixture(engine, server, url);
    }

    /// <summary>The text the fixture's own model generates greedily after <paramref name="prompt"/> with <paramref name="adapter"/>.</summary>
    public string Greedy(string prompt, int tokens, string? adapter) => Tokenizer.Decode(Engine.Greedy(Tokenizer.Encode(prompt), tokens, adapter));

    public async Task<(int Status, JsonElement Body)> Post(string path, object body)
    {
        using var response = await Http.PostAsJsonAsync(path, body);
        return ((int)response.StatusCode, await Read(response));
    }

    public async Task<(int Status, JsonElement Body)> PostRaw(string path, string json)
    {
        using var content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await Http.PostAsync(path, content);
        return ((int)response.StatusCode, await Read(response));
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.StopAsync();
        Engine.Dispose();
    }

    private static async Task<JsonElement> Read(HttpResponseMessage response)
    {
        string text = await response.Content.ReadAsStringAsync();
        return text.StartsWith('{') ? JsonDocument.Parse(text).RootElement.Clone() : default; // server-sent events are read by the streaming tests
    }
}
