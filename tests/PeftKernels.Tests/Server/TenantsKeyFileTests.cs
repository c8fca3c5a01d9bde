using PeftKernels.Server.Tenants;

namespace PeftKernels.Tests.Server;

public class TenantsKeyFileTests
{
    internal const string Example = """
        {
          // comments are allowed
          "tenants": {
            "acme": {
              "adapters": ["support", "sql", "base"],
              "default_adapter": "support",
              "rate_limit": { "requests_per_minute": 600, "burst": 20, "concurrent_requests": 4 }
            },
            "globex": { "adapters": ["sql-v2"] },
            "ops": { "adapters": ["*"], "can_manage_adapters": true }
          },
          "keys": {
            "sk-acme-0123456789": "acme",
            "sk-gateway-0123456789": ["globex", "acme"],
            "sk-ops-0123456789": "ops"
          },
          "aliases": {
            "support": { "support-v1": 90, "support-v2": 10 }
          }
        }
        """;

    [Fact]
    public void ParsesTenantsKeysAndAliases()
    {
        var file = TenantKeyFile.Parse(Example, "keys.json");

        Assert.Equal(["acme", "globex", "ops"], file.Tenants.Keys.Order());
        var acme = file.Tenants["acme"];
        Assert.Equal("support", acme.DefaultAdapter);
        Assert.False(acme.CanManageAdapters);
        Assert.Equal(new TenantRateLimit(600, 20, 4), acme.RateLimit);
        Assert.True(acme.Allows("sql"));
        Assert.False(acme.Allows("sql-v2"));
        Assert.True(file.Tenants["ops"].AllowsAll);
        Assert.True(file.Tenants["ops"].CanManageAdapters);
        Assert.True(file.Tenants["globex"].RateLimit.IsUnlimited);
        Assert.Null(file.Tenants["globex"].DefaultAdapter);

        Assert.Equal(3, file.Keys.Count);
        Assert.Equal(["acme"], file.Keys[0].Value);
        Assert.Equal(["globex", "acme"], file.Keys[1].Value); // order kept: the first is the key's default tenant
        var alias = Assert.Single(file.Aliases);
        Assert.Equal("support", alias.Key);
        Assert.Equal([new CanaryVersion("support-v1", 90), new CanaryVersion("support-v2", 10)], alias.Value);
        Assert.False(file.TrustTenantHeader);
    }

    [Fact]
    public void HeaderOnlyFileNeedsNoKeys()
    {
        var file = TenantKeyFile.Parse("""{"tenants": {"a": {"adapters": ["x"]}}, "trust_tenant_header": true}""", "k.json");
        Assert.True(file.TrustTenantHeader);
        Assert.Empty(file.Keys);
    }

    [Theory]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "extra": 1}""", "k.json: extra: unknown field")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "adaptors": ["y"]}}, "keys": {}}""", "k.json: tenants.a.adaptors: unknown field")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "rate_limit": {"rpm": 5}}}, "keys": {}}""", "k.json: tenants.a.rate_limit.rpm: unknown field")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}, "a": {"adapters": ["y"]}}, "keys": {}}""", "k.json: tenants.a: a duplicate field")]
    [InlineData("""{"tenants": {"a": {"adapters": "x"}}, "keys": {}}""", "k.json: tenants.a.adapters: expected an array of strings, got a string")]
    [InlineData("""{"tenants": {"a": {"adapters": [1]}}, "keys": {}}""", "k.json: tenants.a.adapters[0]: expected a string, got the number 1")]
    [InlineData("""{"tenants": {"a": {"adapters": []}}, "keys": {}}""", "k.json: tenants.a.adapters: empty")]
    [InlineData("""{"tenants": {"a": {}}, "keys": {}}""", "k.json: tenants.a.adapters: missing")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "can_manage_adapters": "yes"}}, "keys": {}}""", "k.json: tenants.a.can_manage_adapters: expected true or false, got a string")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "default_adapter": "y"}}, "keys": {}}""", "k.json: tenants.a.default_adapter: 'y' is not in tenants.a.adapters [x]")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "default_adapter": 3}}, "keys": {}}""", "k.json: tenants.a.default_adapter: expected a string, got the number 3")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "rate_limit": {"requests_per_minute": 0}}}, "keys": {}}""", "k.json: tenants.a.rate_limit.requests_per_minute: expected a positive integer, got 0")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "rate_limit": {"requests_per_minute": 1.5}}}, "keys": {}}""", "k.json: tenants.a.rate_limit.requests_per_minute: expected a positive integer, got 1.5")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "rate_limit": {"burst": 3}}}, "keys": {}}""", "k.json: tenants.a.rate_limit.burst: set without requests_per_minute")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"], "rate_limit": {}}}, "keys": {}}""", "k.json: tenants.a.rate_limit: empty")]
    [InlineData("""{"tenants": {}, "keys": {}}""", "k.json: tenants: empty")]
    [InlineData("""{"keys": {}}""", "k.json: tenants: missing")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}}""", "k.json: keys: missing")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {"k1": "b"}}""", "k.json: keys[0]: names tenant 'b', which the \"tenants\" section does not define")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {"k1": 7}}""", "k.json: keys[0]: expected a tenant name or an array of tenant names, got the number 7")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {"k1": ["a", "a"]}}""", "k.json: keys[0]: lists a tenant twice")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "trust_tenant_header": 1}""", "k.json: trust_tenant_header: expected true or false, got the number 1")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {"v1": 0}}}""", "k.json: aliases.s.v1: expected a positive number, got 0")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {"v1": "1"}}}""", "k.json: aliases.s.v1: expected a positive number, got a string")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {}}}""", "k.json: aliases: alias 's': no versions")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {"s": 1}}}""", "k.json: aliases: alias 's': names itself")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {"t": 1}, "t": {"v": 1}}}""", "is itself an alias")]
    [InlineData("""{"tenants": {"a": {"adapters": ["x"]}}, "keys": {}, "aliases": {"s": {"v": 1, "v": 2}}}""", "k.json: aliases.s.v: a duplicate field")]
    [InlineData("""[1, 2]""", "k.json: (top level): expected an object, got an array")]
    [InlineData("""{"tenants": """, "k.json: not valid JSON (line 1")]
    public void BadFilesNameTheFileAndTheField(string json, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => TenantKeyFile.Parse(json, "k.json"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DuplicateKeyIsNamedByPositionNeverPrinted()
    {
        const string json = """{"tenants": {"a": {"adapters": ["x"]}}, "keys": {"sk-secret-1": "a", "sk-secret-2": "a", "sk-secret-1": "a"}}""";
        var e = Assert.Throws<InvalidDataException>(() => TenantKeyFile.Parse(json, "k.json"));
        Assert.Contains("k.json: keys[2]: a duplicate key", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("sk-secret", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LoadNamesThePath()
    {
        using var folder = new TempFolder();
        string path = Path.Combine(folder.Path, "keys.json");
        Assert.Throws<FileNotFoundException>(() => TenantKeyFile.Load(path));

        File.WriteAllText(path, """{"tenants": {"a": {"adapters": ["x"], "oops": true}}, "keys": {}}""");
        var e = Assert.Throws<InvalidDataException>(() => TenantKeyFile.Load(path));
        Assert.StartsWith($"{path}: tenants.a.oops: unknown field", e.Message, StringComparison.Ordinal);

        File.WriteAllText(path, Example);
        Assert.Equal(path, TenantKeyFile.Load(path).Source);
    }
}
