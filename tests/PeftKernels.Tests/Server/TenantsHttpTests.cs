using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using PeftKernels.Server;
using PeftKernels.Server.Tenants;

namespace PeftKernels.Tests.Server;

/// <summary>The gate on a real Kestrel server: the concurrency lease released with the response; alias changes over HTTP.</summary>
public class TenantsHttpTests
{
    [Fact]
    public async Task ConcurrencyCapHoldsForTheRequestsLifetimeOnKestrel()
    {
        using var gate = new TenantGate(TenantKeyFile.Parse(
            """{"tenants": {"a": {"adapters": ["*"], "rate_limit": {"concurrent_requests": 1}}}, "keys": {"ka": "a"}}""", "keys.json"), "base");
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        await using var app = builder.Build();
        app.MapGet("/work", async (HttpContext context) =>
        {
            var decision = gate.Authenticate(context.Request);
            if (decision.Allowed)
            {
                decision = gate.Route(decision.Tenant!, context.Request.Query["model"], null) is { Allowed: true }
                    ? gate.TryAcquire(decision.Tenant!) : decision;
            }

            if (!decision.Allowed)
            {
                context.Response.StatusCode = decision.Status;
                if (decision.RetryAfter is { } after)
                {
                    context.Response.Headers.RetryAfter = ((int)Math.Ceiling(after.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
                }

                await context.Response.WriteAsync(decision.Code!);
                return;
            }

            if (context.Request.Query.ContainsKey("hold"))
            {
                entered.TrySetResult();
                await release.Task;
            }

            await context.Response.WriteAsync("ok");
        });
        await app.StartAsync();
        try
        {
            string address = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
            using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(10) };
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "ka");

            var held = client.GetAsync("/work?hold=1");
            await entered.Task.WaitAsync(TimeSpan.FromSeconds(10));
            using (var refused = await client.GetAsync("/work"))
            {
                Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
                Assert.Equal("rate_limit_exceeded", await refused.Content.ReadAsStringAsync());
                Assert.NotNull(refused.Headers.RetryAfter);
            }

            release.SetResult();
            using (var first = await held)
            {
                Assert.Equal(HttpStatusCode.OK, first.StatusCode);
            }

            // The lease goes back when the held response completes (just after the client has read it): poll briefly.
            HttpStatusCode status = HttpStatusCode.TooManyRequests;
            for (int i = 0; i < 100 && status != HttpStatusCode.OK; i++)
            {
                using var again = await client.GetAsync("/work");
                status = again.StatusCode;
                if (status != HttpStatusCode.OK)
                {
                    await Task.Delay(20);
                }
            }

            Assert.Equal(HttpStatusCode.OK, status);
            using var unauthorized = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(10) };
            Assert.Equal(HttpStatusCode.Unauthorized, (await unauthorized.GetAsync("/work")).StatusCode);
        }
        finally
        {
            await app.StopAsync();
        }
    }

    [Fact]
    public async Task AliasesChangeOverHttpForAdapterManagersOnly()
    {
        using var gate = new TenantGate(TenantKeyFile.Parse(TenantsKeyFileTests.Example, "keys.json"), "base");
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        await using var app = builder.Build();
        app.MapPeftAliases(gate, gate.Aliases);
        await app.StartAsync();
        try
        {
            string address = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
            using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(10) };
            async Task<(HttpStatusCode Status, JsonElement Body)> Send(HttpMethod method, string path, string? key, string? body = null)
            {
                using var request = new HttpRequestMessage(method, path);
                if (key != null)
                {
                    request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
                }

                if (body != null)
                {
                    request.Content = new StringContent(body, Encoding.UTF8, "application/json");
                }

                using var response = await client.SendAsync(request);
                return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.Clone());
            }

            var (status, list) = await Send(HttpMethod.Get, "/v1/aliases", "sk-acme-0123456789");
            Assert.Equal(HttpStatusCode.OK, status);
            var support = Assert.Single(list.GetProperty("data").EnumerateArray());
            Assert.Equal("support", support.GetProperty("id").GetString());
            Assert.Equal(90, support.GetProperty("versions").GetProperty("support-v1").GetDouble());

            var (noKey, noKeyBody) = await Send(HttpMethod.Get, "/v1/aliases", null);
            Assert.Equal(HttpStatusCode.Unauthorized, noKey);
            Assert.Equal("invalid_api_key", noKeyBody.GetProperty("error").GetProperty("code").GetString());

            const string rollout = """{"versions": {"support-v1": 50, "support-v2": 50}}""";
            var (forbidden, forbiddenBody) = await Send(HttpMethod.Put, "/v1/aliases/support", "sk-acme-0123456789", rollout);
            Assert.Equal(HttpStatusCode.Forbidden, forbidden); // acme may not manage adapters
            Assert.Equal("permission_denied", forbiddenBody.GetProperty("error").GetProperty("code").GetString());

            var (ok, updated) = await Send(HttpMethod.Put, "/v1/aliases/support", "sk-ops-0123456789", """{"versions": {"support-v2": 1}}""");
            Assert.Equal(HttpStatusCode.OK, ok);
            Assert.Equal(1, updated.GetProperty("versions").GetProperty("support-v2").GetDouble());
            var acme = gate.Authenticate(new DefaultHttpContext { Request = { Headers = { Authorization = "Bearer sk-acme-0123456789" } } }.Request).Tenant!;
            Assert.Equal("support-v2", gate.Route(acme, "support", "anyone").Model); // the next request sees the change

            var (bad, badBody) = await Send(HttpMethod.Put, "/v1/aliases/support", "sk-ops-0123456789", """{"versions": {"support-v1": 0}}""");
            Assert.Equal(HttpStatusCode.BadRequest, bad);
            Assert.Contains("weight 0", badBody.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
            Assert.Equal(HttpStatusCode.BadRequest, (await Send(HttpMethod.Put, "/v1/aliases/x", "sk-ops-0123456789", """{"versions": {"support": 1}}""")).Status);
            Assert.Equal(HttpStatusCode.BadRequest, (await Send(HttpMethod.Put, "/v1/aliases/x", "sk-ops-0123456789", """{"versions": ["a"]}""")).Status);
            Assert.Equal(HttpStatusCode.BadRequest, (await Send(HttpMethod.Put, "/v1/aliases/x", "sk-ops-0123456789", """{"versions": """)).Status);
            Assert.Equal("support-v2", gate.Route(acme, "support", "anyone").Model); // refused changes leave the map alone

            Assert.Equal(HttpStatusCode.OK, (await Send(HttpMethod.Delete, "/v1/aliases/support", "sk-ops-0123456789")).Status);
            Assert.Equal("support", gate.Route(acme, "support", "anyone").Model);
            var (gone, goneBody) = await Send(HttpMethod.Delete, "/v1/aliases/support", "sk-ops-0123456789");
            Assert.Equal(HttpStatusCode.NotFound, gone);
            Assert.Equal("alias_not_found", goneBody.GetProperty("error").GetProperty("code").GetString());
        }
        finally
        {
            await app.StopAsync();
        }
    }
}
