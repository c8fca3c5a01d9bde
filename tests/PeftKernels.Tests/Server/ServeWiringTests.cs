// The server as `peft serve` composes it (PeftServer.CreateWithTenantsAndMetrics), over real HTTP on
// loopback: an API-key file scopes each key to its adapters (401 without a key, 403 outside the key's
// adapters, 200 inside), GET /metrics counts the requests by status and model, /v1/chat/completions
// renders the model folder's chat template (a template's raise_exception is a 400 carrying its text),
// and the end-of-sequence ids come from generation_config.json and config.json.
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using PeftKernels.Models;
using PeftKernels.Server;
using PeftKernels.Testing;

namespace PeftKernels.Tests.Server;

public sealed class ServeWiringTests
{
    private const string Template =
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('this model takes no system messages') }}{% endif %}"
        + "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

    private static string ModelFolder(TempFolder root)
    {
        string folder = Path.Combine(root.Path, "my-base");
        TinyLlama.Model(LlamaConfig.Tiny(256) with { HeadDim = 16 }).Save(folder);
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"),
            System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object> { ["chat_template"] = Template, ["eos_token"] = "</s>" }));
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), "{\"eos_token_id\": [7, 9]}");
        return folder;
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    [Fact]
    public async Task KeysScopeAdapters_MetricsCountRequests_ChatUsesTheFoldersTemplate()
    {
        using var engine = new EngineFixture();
        using var root = new TempFolder();
        string keys = Path.Combine(root.Path, "keys.json");
        File.WriteAllText(keys, """
            { "tenants": { "acme": { "adapters": ["r1", "my-base"], "default_adapter": "r1" } },
              "keys": { "sk-acme-0123456789": "acme" } }
            """);
        var options = new ServeOptions
        {
            ModelFolder = ModelFolder(root),
            AdaptersDir = Path.GetDirectoryName(engine.Folder("r1")),
            ApiKeysFile = keys,
            Port = 0,
            Threads = 1,
        };
        await using var server = PeftServer.CreateWithTenantsAndMetrics(options, logging => { });
        Assert.Equal([7, 9], server.Model.EosTokenIds.Take(2));
        var url = await server.StartAsync();
        using var http = new HttpClient { BaseAddress = url };

        using (var anonymous = await http.PostAsync("/v1/completions", Json("{\"model\": \"r1\", \"prompt\": \"hi\", \"max_tokens\": 2}")))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        }

        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "sk-acme-0123456789");
        using (var allowed = await http.PostAsync("/v1/completions", Json("{\"model\": \"r1\", \"prompt\": \"hi\", \"max_tokens\": 2}")))
        {
            Assert.Equal(HttpStatusCode.OK, allowed.StatusCode);
        }

        using (var other = await http.PostAsync("/v1/completions", Json("{\"model\": \"r8\", \"prompt\": \"hi\", \"max_tokens\": 2}")))
        {
            Assert.Equal(HttpStatusCode.Forbidden, other.StatusCode);
            Assert.Contains("\"error\"", await other.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        using (var chat = await http.PostAsync("/v1/chat/completions", Json("{\"model\": \"r1\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 2}")))
        {
            Assert.Equal(HttpStatusCode.OK, chat.StatusCode);
            Assert.Contains("\"chat.completion\"", await chat.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        using (var refused = await http.PostAsync("/v1/chat/completions",
            Json("{\"model\": \"r1\", \"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 2}")))
        {
            Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
            Assert.Contains("this model takes no system messages", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        string metrics = await http.GetStringAsync("/metrics");
        Assert.Contains("peft_requests_total{", metrics, StringComparison.Ordinal);
        var lines = metrics.Split('\n');
        Assert.Contains(lines, l => l.StartsWith("peft_requests_total{", StringComparison.Ordinal) && l.Contains("status=\"200\"", StringComparison.Ordinal)
            && l.Contains("model=\"r1\"", StringComparison.Ordinal) && l.Contains("/v1/completions", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("peft_requests_total{", StringComparison.Ordinal) && l.Contains("status=\"403\"", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("peft_queue_length", StringComparison.Ordinal));
    }

    [Fact]
    public void AMalformedKeyFileIsRefusedNamingTheFileAndTheField()
    {
        using var root = new TempFolder();
        string keys = Path.Combine(root.Path, "keys.json");
        File.WriteAllText(keys, "{ \"tenants\": { \"acme\": { \"adapters\": \"r1\" } }, \"keys\": {} }");
        var options = new ServeOptions { ModelFolder = ModelFolder(root), ApiKeysFile = keys, Port = 0, Threads = 1 };
        var ex = Assert.ThrowsAny<Exception>(() => PeftServer.CreateWithTenantsAndMetrics(options, logging => { }));
        Assert.Contains("keys.json", ex.Message, StringComparison.Ordinal);
        Assert.Contains("adapters", ex.Message, StringComparison.Ordinal);
    }
}
