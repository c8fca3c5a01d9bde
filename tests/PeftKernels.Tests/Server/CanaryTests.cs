using PeftKernels.Server.Tenants;

namespace PeftKernels.Tests.Server;

public class CanaryTests
{
    private static CanaryAliases Support(double v1 = 90, double v2 = 10)
    {
        var aliases = new CanaryAliases();
        aliases.Set("support", [new CanaryVersion("support-v1", v1), new CanaryVersion("support-v2", v2)]);
        return aliases;
    }

    [Fact]
    public void SameUserSameVersionAcrossCallsAndInstances()
    {
        var a = Support();
        var b = Support();
        for (int u = 0; u < 200; u++)
        {
            string user = $"user-{u}";
            string first = a.Resolve("support", user);
            Assert.Equal(first, a.Resolve("support", user));
            Assert.Equal(first, b.Resolve("support", user)); // a stable hash, not a per-process one
        }

        Assert.Equal(CanaryAliases.StickyPoint("support", "alice"), CanaryAliases.StickyPoint("support", "alice"));
        Assert.InRange(CanaryAliases.StickyPoint("support", "alice"), 0.0, 0.9999999999);
    }

    [Theory]
    [InlineData(90, 10)]
    [InlineData(50, 50)]
    [InlineData(0.99, 0.01)]
    public void SplitConvergesToTheWeights(double w1, double w2)
    {
        const int users = 20_000;
        var aliases = Support(w1, w2);
        int canary = Enumerable.Range(0, users).Count(u => aliases.Resolve("support", $"user-{u}@example.com") == "support-v2");
        double p = w2 / (w1 + w2);
        double sigma = Math.Sqrt(p * (1 - p) / users);
        Assert.InRange(canary / (double)users, p - (5 * sigma), p + (5 * sigma));
    }

    [Fact]
    public void ThreeWaySplitConverges()
    {
        var aliases = new CanaryAliases();
        aliases.Set("m", [new CanaryVersion("a", 5), new CanaryVersion("b", 3), new CanaryVersion("c", 2)]);
        const int users = 30_000;
        var counts = Enumerable.Range(0, users).GroupBy(u => aliases.Resolve("m", u.ToString(System.Globalization.CultureInfo.InvariantCulture)))
            .ToDictionary(g => g.Key, g => g.Count() / (double)users);
        Assert.Equal(["a", "b", "c"], counts.Keys.Order());
        Assert.InRange(counts["a"], 0.5 - 0.015, 0.5 + 0.015);
        Assert.InRange(counts["b"], 0.3 - 0.014, 0.3 + 0.014);
        Assert.InRange(counts["c"], 0.2 - 0.012, 0.2 + 0.012);
    }

    [Fact]
    public void RequestsWithoutAUserDrawAtRandom()
    {
        var aliases = Support(50, 50);
        const int draws = 4000;
        int v2 = Enumerable.Range(0, draws).Count(_ => aliases.Resolve("support", null) == "support-v2");
        Assert.InRange(v2 / (double)draws, 0.5 - 0.04, 0.5 + 0.04); // 5 sigma
        Assert.Contains(aliases.Resolve("support", ""), new[] { "support-v1", "support-v2" });
    }

    [Fact]
    public void RaisingTheCanaryWeightOnlyMovesUsersOntoIt()
    {
        var at10 = Support(90, 10);
        var at30 = Support(70, 30);
        int moved = 0;
        for (int u = 0; u < 5000; u++)
        {
            string user = $"u{u}";
            if (at10.Resolve("support", user) == "support-v2")
            {
                Assert.Equal("support-v2", at30.Resolve("support", user));
            }
            else if (at30.Resolve("support", user) == "support-v2")
            {
                moved++;
            }
        }

        Assert.InRange(moved, 800, 1200); // about 20 % of users moved onto the canary
    }

    [Fact]
    public void NamesThatAreNotAliasesPassThrough()
    {
        var aliases = Support();
        Assert.Equal("r8", aliases.Resolve("r8", "alice"));
        Assert.Equal("support-v1", aliases.Resolve("support-v1", "alice"));
        Assert.True(aliases.IsAlias("support"));
        Assert.False(aliases.IsAlias("support-v1"));
    }

    [Fact]
    public void SetRemoveAndSnapshotsAreImmutable()
    {
        var aliases = Support();
        var before = aliases.Snapshot();
        aliases.Set("support", [new CanaryVersion("support-v2", 1)]);
        aliases.Set("sql", [new CanaryVersion("sql-v1", 1)]);
        Assert.Equal(2, before["support"].Versions.Count); // the old snapshot is unchanged
        Assert.False(before.ContainsKey("sql"));
        Assert.Equal("support-v2", aliases.Resolve("support", "anyone"));
        Assert.True(aliases.Remove("sql"));
        Assert.False(aliases.Remove("sql"));
        Assert.Equal(["support"], aliases.Snapshot().Keys);
    }

    public static TheoryData<string, CanaryVersion[], string> Invalid => new()
    {
        { "s", [], "no versions" },
        { "s", [new("v1", 0)], "weight 0" },
        { "s", [new("v1", -1)], "weight -1" },
        { "s", [new("v1", double.NaN)], "weight NaN" },
        { "s", [new("v1", double.PositiveInfinity)], "positive finite" },
        { "s", [new("", 1)], "a version name is empty" },
        { "s", [new("v1", 1), new("v1", 2)], "listed twice" },
        { "s", [new("s", 1)], "names itself" },
        { "s", [new("support", 1)], "'support' is itself an alias" },
        { "support-v1", [new("x", 1)], "is a version of alias 'support'" },
    };

    [Theory]
    [MemberData(nameof(Invalid))]
    public void InvalidAliasesAreRefusedAndLeaveTheMapAlone(string alias, CanaryVersion[] versions, string message)
    {
        var aliases = Support();
        var e = Assert.Throws<ArgumentException>(() => aliases.Set(alias, versions));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.Equal(["support"], aliases.Snapshot().Keys);
        Assert.Equal(2, aliases.Snapshot()["support"].Versions.Count);
    }

    [Fact]
    public async Task ChangesUnderConcurrentResolveAreAtomic()
    {
        var aliases = new CanaryAliases();
        CanaryVersion[] old = [new("a1", 1), new("a2", 1)];
        CanaryVersion[] next = [new("b1", 1), new("b2", 3), new("b3", 1)];
        aliases.Set("m", old);
        var valid = new HashSet<string> { "a1", "a2", "b1", "b2", "b3" };
        using var stop = new CancellationTokenSource();
        int writes = 0;
        var writer = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                aliases.Set("m", (Volatile.Read(ref writes) & 1) == 0 ? next : old);
                Interlocked.Increment(ref writes);
            }
        });

        var readers = Enumerable.Range(0, 4).Select(r => Task.Run(() =>
        {
            var seen = new HashSet<string>();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < 20_000 || (Volatile.Read(ref writes) < 100 && clock.Elapsed < TimeSpan.FromSeconds(5)); i++)
            {
                string version = aliases.Resolve("m", (i & 1) == 0 ? $"user-{i % 97}" : null);
                Assert.Contains(version, valid);
                var snapshot = aliases.Snapshot()["m"]; // one consistent map: the old versions or the new, never a mix
                Assert.True(snapshot.Versions.Count == 2 ? snapshot.Versions.All(v => v.Name[0] == 'a') : snapshot.Versions.All(v => v.Name[0] == 'b'));
                seen.Add(version);
            }

            return seen;
        })).ToArray();

        var seenAll = await Task.WhenAll(readers);
        await stop.CancelAsync();
        await writer;
        Assert.True(writes >= 100, $"only {writes} writes happened during the reads");
        Assert.True(seenAll.SelectMany(r => r).Distinct().Count() >= 3); // both maps were seen
    }
}
