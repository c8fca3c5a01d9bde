// The HTTP layer's use of IRequestGate and IServerObserver: the gate's decisions become their statuses
// with OpenAI error bodies (401, 403, 429 with Retry-After), its routing picks the adapter, adapter
// management needs a tenant that may manage adapters; the observer hears of every request, its tokens
// and its latencies.
using System.Collections.Concurrent;
using System.Net.Http.Json;
using Microsoft.AspNetCore.Http;
using PeftKernels.Server;

namespace PeftKernels.Tests.Server;

public sealed class ServerGateTests
{
    private sealed class KeyGate : IRequestGate
    {
        private int acquired;

        public GateDecision Authenticate(HttpRequest request) => request.Headers.Authorization.ToString() switch
        {
            "Bearer user-key" => new GateDecision(200, Tenant: new TenantIdentity("user", CanManageAdapters: false)),
            "Bearer admin-key" => new GateDecision(200, Tenant: new TenantIdentity("admin", CanManageAdapters: true)),
            _ => new GateDecision(401, "invalid API key", "invalid_api_key"),
        };

        public GateDecision Route(TenantIdentity tenant, string? requestedModel, string? user) => requestedModel switch
        {
            "secret" => new GateDecision(403, $"tenant {tenant.Name} may not use 'secret'", "model_not_allowed"),
            "alias" => new GateDecision(200, Tenant: tenant, Model: user == "u2" ? "r8" : "r1"),
            _ => new GateDecision(200, Tenant: tenant, Model: requestedModel),
        };

        public GateDecision TryAcquire(TenantIdentity tenant) => tenant.Name == "user" && Interlocked.Increment(ref acquired) > 2
            ? new GateDecision(429, "rate limit reached", "rate_limit_exceeded", RetryAfter: TimeSpan.FromSeconds(2))
            : new GateDecision(200, Tenant: tenant);
    }

    private sealed class Recorder : IServerObserver
    {
        public ConcurrentQueue<(string Endpoint, int Status, string? Model)> Finished { get; } = new();

        public ConcurrentQueue<(string Model, int Prompt, int Completion)> TokenCounts { get; } = new();

        public int FirstTokens;

        public int InterTokens;

        public void RequestFinished(string endpoint, int status, string? model, TimeSpan duration) => Finished.Enqueue((endpoint, status, model));

        public void Tokens(string model, int promptTokens, int completionTokens) => TokenCounts.Enqueue((model, promptTokens, completionTokens));

        public void FirstToken(string model, TimeSpan sinceArrival) => Interlocked.Increment(ref FirstTokens);

        public void InterToken(string model, TimeSpan gap) => Interlocked.Increment(ref InterTokens);
    }

    private static async Task<(int Status, System.Text.Json.JsonElement Body, HttpResponseMessage Response)> Send(ServerFixture f, string path, string? key, object body)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        if (key != null)
        {
            request.Headers.Authorization = new("Bearer", key);
        }

        var response = await f.Http.SendAsync(request);
        string text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, System.Text.Json.JsonDocument.Parse(text).RootElement.Clone(), response);
    }

    [Fact]
    public async Task GateDecisions_BecomeStatusesAndRouting()
    {
        await using var f = await ServerFixture.Start(gate: new KeyGate());
        var (s401, b401, _) = await Send(f, "/v1/completions", null, new { prompt = "a" });
        Assert.Equal(401, s401);
        Assert.Equal("invalid_api_key", b401.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal("authentication_error", b401.GetProperty("error").GetProperty("type").GetString());
        Assert.Equal(403, (await Send(f, "/v1/completions", "user-key", new { model = "secret", prompt = "a" })).Status);

        var (ok, routed, _) = await Send(f, "/v1/completions", "user-key", new { model = "alias", prompt = "route", max_tokens = 5, temperature = 0, user = "u2" });
        Assert.Equal(200, ok);
        Assert.Equal("r8", routed.GetProperty("model").GetString());
        Assert.Equal(f.Greedy("route", 5, "r8"), routed.GetProperty("choices")[0].GetProperty("text").GetString());

        Assert.Equal(403, (await Send(f, "/v1/load_lora_adapter", "user-key", new { lora_name = "x", lora_path = "r1" })).Status);
        Assert.Equal(200, (await Send(f, "/v1/load_lora_adapter", "admin-key", new { lora_name = "x", lora_path = "r1" })).Status);
        Assert.Equal(403, (await Send(f, "/v1/completions", "user-key", new { prompt = "a", lora = new[] { new { name = "secret", scale = 1.0 } } })).Status);

        Assert.Equal(200, (await Send(f, "/v1/completions", "user-key", new { prompt = "a", max_tokens = 1 })).Status);
        var (s429, b429, r429) = await Send(f, "/v1/completions", "user-key", new { prompt = "a", max_tokens = 1 });
        Assert.Equal(429, s429);
        Assert.Equal("rate_limit_exceeded", b429.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal("2", r429.Headers.GetValues("Retry-After").Single());
    }

    [Fact]
    public async Task Observer_HearsEveryRequestItsTokensAndLatencies()
    {
        var recorder = new Recorder();
        await using var f = await ServerFixture.Start(observer: recorder);
        Assert.Equal(200, (await f.Post("/v1/completions", new { model = "r1", prompt = "obs", max_tokens = 6, temperature = 0 })).Status);
        Assert.Equal(200, (await f.Post("/v1/completions", new { model = "r1", prompt = "obs", max_tokens = 6, stream = true })).Status);
        Assert.Equal(404, (await f.Post("/v1/completions", new { model = "nope", prompt = "obs" })).Status);
        await Task.Delay(50); // RequestFinished runs after the response is sent
        Assert.Equal<(string, int, string?)>([("/v1/completions", 200, "r1"), ("/v1/completions", 200, "r1"), ("/v1/completions", 404, null)], // an unknown model ran on nothing
            recorder.Finished.Select(r => (r.Endpoint, r.Status, r.Model)).ToList());
        Assert.Equal([("r1", 3, 6), ("r1", 3, 6)], recorder.TokenCounts.ToList());
        Assert.Equal(2, recorder.FirstTokens);
        Assert.Equal(10, recorder.InterTokens);
    }
}
