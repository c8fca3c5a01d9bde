using System.Net;
using System.Net.Http.Headers;
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

/// <summary>The gate on a real Kestrel server: a concurrency lease taken by TryAcquire is released when the response completes.</summary>
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
}
