using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PeftKernels.Server;
using PeftKernels.Server.Tenants;

namespace PeftKernels.Tests.Server;

public class TenantsGateTests
{
    private const string AcmeKey = "sk-acme-0123456789";
    private const string GatewayKey = "sk-gateway-0123456789";
    private const string OpsKey = "sk-ops-0123456789";

    private static TenantGate Gate(string json = TenantsKeyFileTests.Example) => new(TenantKeyFile.Parse(json, "keys.json"), "base");

    private static HttpRequest Request(string? authorization = null, string? tenant = null, IHttpResponseFeature? response = null)
    {
        var context = new DefaultHttpContext();
        if (response != null)
        {
            context.Features.Set(response);
        }

        if (authorization != null)
        {
            context.Request.Headers.Authorization = authorization;
        }

        if (tenant != null)
        {
            context.Request.Headers[TenantGate.TenantHeader] = tenant;
        }

        return context.Request;
    }

    private static TenantIdentity Tenant(TenantGate gate, string key, string? tenant = null, IHttpResponseFeature? response = null)
    {
        var decision = gate.Authenticate(Request("Bearer " + key, tenant, response));
        Assert.True(decision.Allowed, decision.Message);
        return decision.Tenant!;
    }

    [Theory]
    [InlineData(null, "You didn't provide an API key")]
    [InlineData("", "You didn't provide an API key")]
    [InlineData("Basic c2stYWNtZQ==", "malformed")]
    [InlineData("Bearer ", "malformed")]
    [InlineData("Bearer sk-acme-012345678", "Incorrect API key")] // a prefix of a real key
    [InlineData("Bearer sk-acme-0123456789x", "Incorrect API key")]
    public void MissingOrUnknownKeysAre401(string? authorization, string message)
    {
        using var gate = Gate();
        var decision = gate.Authenticate(Request(authorization));
        Assert.Equal(401, decision.Status);
        Assert.Equal("invalid_api_key", decision.Code);
        Assert.Contains(message, decision.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("sk-", decision.Message, StringComparison.Ordinal);
        Assert.Null(decision.Tenant);
    }

    [Fact]
    public void KeysSelectTheirTenantAndXTenantIdPicksAmongAKeysTenants()
    {
        using var gate = Gate();
        Assert.Equal(new TenantIdentity("acme", false), Tenant(gate, AcmeKey));
        Assert.Equal(new TenantIdentity("ops", true), Tenant(gate, OpsKey));
        Assert.Equal("acme", Tenant(gate, "  " + AcmeKey + " ").Name); // whitespace around the key is not part of it
        Assert.Equal(new TenantIdentity("acme", false), gate.Authenticate(Request("bearer " + AcmeKey)).Tenant); // the scheme is case-insensitive

        Assert.Equal("globex", Tenant(gate, GatewayKey).Name); // no header: the key's first tenant
        Assert.Equal("acme", Tenant(gate, GatewayKey, "acme").Name);
        Assert.Equal("acme", Tenant(gate, AcmeKey, "acme").Name);

        var denied = gate.Authenticate(Request("Bearer " + AcmeKey, "globex"));
        Assert.Equal(403, denied.Status);
        Assert.Equal("permission_denied", denied.Code);
        Assert.Contains("globex", denied.Message, StringComparison.Ordinal);
        Assert.Equal(403, gate.Authenticate(Request("Bearer " + GatewayKey, "ops")).Status);
    }

    [Fact]
    public void HeaderOnlyRoutingNeedsATrustingFile()
    {
        using var closed = Gate();
        Assert.Equal(401, closed.Authenticate(Request(tenant: "acme")).Status); // a header alone is no credential

        using var open = Gate("""{"tenants": {"a": {"adapters": ["x"]}, "b": {"adapters": ["y"]}}, "keys": {"kb": "b"}, "trust_tenant_header": true}""");
        Assert.Equal("a", open.Authenticate(Request(tenant: "a")).Tenant!.Name);
        var unknown = open.Authenticate(Request(tenant: "zzz"));
        Assert.Equal(401, unknown.Status);
        Assert.Contains("zzz", unknown.Message, StringComparison.Ordinal);
        Assert.Equal(401, open.Authenticate(Request()).Status);
        Assert.Equal(403, open.Authenticate(Request("Bearer kb", "a")).Status); // a key still binds its tenants
        Assert.Equal(401, open.Authenticate(Request("Bearer wrong", "a")).Status);
    }

    [Fact]
    public void RouteAppliesDefaultsScopesAndAliases()
    {
        using var gate = Gate();
        var acme = Tenant(gate, AcmeKey);
        var globex = Tenant(gate, GatewayKey);
        var ops = Tenant(gate, OpsKey);

        Assert.Equal("sql", gate.Route(acme, "sql", null).Model);
        Assert.Equal("base", gate.Route(acme, "base", null).Model); // acme may use the base model: its name means the base
        Assert.Contains(gate.Route(acme, null, "u1").Model, new[] { "support-v1", "support-v2" }); // default adapter "support" is an alias
        Assert.Contains(gate.Route(acme, "", "u1").Model, new[] { "support-v1", "support-v2" });
        Assert.Equal(gate.Route(acme, "support", "u1").Model, gate.Route(acme, null, "u1").Model);

        var forbidden = gate.Route(acme, "sql-v2", null);
        Assert.Equal(403, forbidden.Status);
        Assert.Equal("model_not_allowed", forbidden.Code);
        Assert.Contains("'acme'", forbidden.Message, StringComparison.Ordinal);
        Assert.Contains("'sql-v2'", forbidden.Message, StringComparison.Ordinal);
        Assert.Equal(403, gate.Route(acme, "support-v2", null).Status); // an alias grants its versions only through the alias

        Assert.Equal("sql-v2", gate.Route(globex, "sql-v2", null).Model);
        var none = gate.Route(globex, null, null); // no default adapter, base not allowed
        Assert.Equal(403, none.Status);
        Assert.Contains("no default adapter", none.Message, StringComparison.Ordinal);
        Assert.Equal(403, gate.Route(globex, "base", null).Status);

        Assert.Equal("anything", gate.Route(ops, "anything", null).Model);
        Assert.Equal("base", gate.Route(ops, null, null).Model); // "*" and no default: the base model
        Assert.Equal(401, gate.Route(new TenantIdentity("stranger", false), "x", null).Status);
    }

    [Fact]
    public void BaseNameReachesTheDefaultAdapterWhenTheTenantMayNotUseTheBase()
    {
        using var gate = Gate("""{"tenants": {"t": {"adapters": ["mine"], "default_adapter": "mine"}}, "keys": {"k": "t"}}""");
        var t = Tenant(gate, "k");
        Assert.Equal("mine", gate.Route(t, "base", null).Model);
        Assert.Equal("mine", gate.Route(t, null, null).Model);
        Assert.Equal(403, gate.Route(t, "other", null).Status);
    }

    [Fact]
    public void AliasesChangedAtRunTimeApplyToTheNextRoute()
    {
        using var gate = Gate();
        var acme = Tenant(gate, AcmeKey);
        gate.Aliases.Set("support", [new CanaryVersion("support-v3", 1)]);
        Assert.Equal("support-v3", gate.Route(acme, "support", "anyone").Model);
        gate.Aliases.Remove("support");
        Assert.Equal("support", gate.Route(acme, "support", "anyone").Model);
    }

    [Fact]
    public void RequestsPerMinuteRunOutWith429AndRetryAfter()
    {
        using var gate = Gate("""
            {"tenants": {"a": {"adapters": ["*"], "rate_limit": {"requests_per_minute": 2}}, "b": {"adapters": ["*"]}},
             "keys": {"ka1": "a", "ka2": "a", "kb": "b"}}
            """);
        Assert.True(gate.TryAcquire(Tenant(gate, "ka1")).Allowed);
        Assert.True(gate.TryAcquire(Tenant(gate, "ka2")).Allowed); // two keys, one tenant, one bucket
        var refused = gate.TryAcquire(Tenant(gate, "ka1"));
        Assert.Equal(429, refused.Status);
        Assert.Equal("rate_limit_exceeded", refused.Code);
        Assert.Contains("requests per minute", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(refused.RetryAfter);
        Assert.InRange(refused.RetryAfter!.Value, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(31)); // one token every 30 s
        Assert.Equal(429, gate.TryAcquire(Tenant(gate, "ka2")).Status);

        for (int i = 0; i < 100; i++)
        {
            Assert.True(gate.TryAcquire(Tenant(gate, "kb")).Allowed); // other tenants are unaffected
        }
    }

    [Theory]
    [InlineData(1, null)]
    [InlineData(90, 3)]
    [InlineData(100_000, 1)] // more tokens per refill than the bucket holds
    [InlineData(int.MaxValue, null)]
    public void AnyRequestRateMakesAWorkingBucket(int rpm, int? burst)
    {
        string limit = burst is int b ? $$"""{"requests_per_minute": {{rpm}}, "burst": {{b}}}""" : $$"""{"requests_per_minute": {{rpm}}}""";
        using var gate = Gate("""{"tenants": {"a": {"adapters": ["*"], "rate_limit": """ + limit + """}}, "keys": {"k": "a"}}""");
        var tenant = Tenant(gate, "k");
        Assert.True(gate.TryAcquire(tenant).Allowed);
        if (rpm == 1)
        {
            var refused = gate.TryAcquire(tenant);
            Assert.Equal(429, refused.Status);
            Assert.InRange(refused.RetryAfter!.Value, TimeSpan.FromSeconds(50), TimeSpan.FromSeconds(61));
        }
    }

    [Fact]
    public async Task ConcurrencyLeaseIsHeldUntilTheResponseCompletes()
    {
        using var gate = Gate("""{"tenants": {"a": {"adapters": ["*"], "rate_limit": {"concurrent_requests": 1}}}, "keys": {"k": "a"}}""");
        var first = new CompletingResponse();
        Assert.True(gate.TryAcquire(Tenant(gate, "k", response: first)).Allowed);

        var refused = gate.TryAcquire(Tenant(gate, "k", response: new CompletingResponse()));
        Assert.Equal(429, refused.Status);
        Assert.Contains("concurrent requests", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(refused.RetryAfter);

        await first.CompleteAsync();
        var third = new CompletingResponse();
        Assert.True(gate.TryAcquire(Tenant(gate, "k", response: third)).Allowed);
        await third.CompleteAsync();

        // An identity the gate did not hand out cannot carry a lease that would be released with its request.
        Assert.Throws<InvalidOperationException>(() => gate.TryAcquire(new TenantIdentity("a", false)));
    }

    [Fact]
    public void OpenGateAdmitsEveryoneAndStillResolvesAliases()
    {
        var aliases = new CanaryAliases();
        aliases.Set("support", [new CanaryVersion("v1", 1), new CanaryVersion("v2", 1)]);
        var gate = new OpenGate("base", canManageAdapters: false, aliases);

        var anyone = gate.Authenticate(Request());
        Assert.True(anyone.Allowed);
        Assert.Equal(new TenantIdentity("anonymous", false), anyone.Tenant);
        Assert.True(gate.Authenticate(Request("Bearer whatever", "acme")).Allowed);
        Assert.True(new OpenGate("base", canManageAdapters: true).Authenticate(Request()).Tenant!.CanManageAdapters);

        Assert.Equal("base", gate.Route(anyone.Tenant!, null, null).Model);
        Assert.Equal("base", gate.Route(anyone.Tenant!, "", null).Model);
        Assert.Equal("r8", gate.Route(anyone.Tenant!, "r8", null).Model);
        string sticky = gate.Route(anyone.Tenant!, "support", "user-7").Model!;
        Assert.Contains(sticky, new[] { "v1", "v2" });
        Assert.Equal(sticky, gate.Route(anyone.Tenant!, "support", "user-7").Model);
        Assert.True(gate.TryAcquire(anyone.Tenant!).Allowed);
    }

    /// <summary>A response whose completion callbacks (RegisterForDispose) run when the test says the request ended.</summary>
    private sealed class CompletingResponse : HttpResponseFeature
    {
        private readonly List<(Func<object, Task> Callback, object State)> completed = [];

        public override void OnCompleted(Func<object, Task> callback, object state) => completed.Add((callback, state));

        public async Task CompleteAsync()
        {
            foreach (var (callback, state) in completed)
            {
                await callback(state);
            }
        }
    }
}
