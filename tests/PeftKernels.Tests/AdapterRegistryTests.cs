using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The engine's adapter registry: LRU eviction under a budget or count, pinning, leases that outlive unload and replace,
/// counters, path confinement and clear errors (EngineAdapterTests checks the loaded factors against the layers).
/// </summary>
public class AdapterRegistryTests
{
    internal static readonly LlamaConfig Config = LlamaConfig.Tiny(40) with { HeadDim = 16, AttentionBias = true, MlpBias = true };

    /// <summary>The same tiny base every call (seeded), with biases, optionally 4-bit.</summary>
    internal static LlamaForCausalLM Base(bool quantized = false)
    {
        var model = Testing.TinyLlama.Model(Config, seed: 3, scale: 5f);
        if (quantized)
        {
            model.QuantizeLinears();
        }

        return model;
    }

    /// <summary>Saves one adapter of <paramref name="config"/> with random factors (seeded) into root/sub and returns the folder.</summary>
    internal static string MakeAdapter(string root, string sub, PeftConfig config, int seed = 1, bool quantized = false)
    {
        var model = Base(quantized);
        var peft = new PeftModel(model);
        if (config is Ia3Config ia3)
        {
            peft.AddAdapter("default", ia3);
        }
        else
        {
            peft.AddAdapter("default", (LoraConfig)config);
        }

        var rng = new Random(seed);
        foreach (var (name, p) in model.NamedParameters())
        {
            bool positive = name.Contains("magnitude", StringComparison.Ordinal) || name.Contains("ia3_l", StringComparison.Ordinal);
            if (name.Contains(".lora_", StringComparison.Ordinal) || name.Contains("ia3_l", StringComparison.Ordinal))
            {
                var d = p.Data;
                for (int i = 0; i < d.Length; i++)
                {
                    d[i] = positive ? d[i] * (0.5f + (float)rng.NextDouble()) + 0.1f : (float)((rng.NextDouble() * 2) - 1) * 0.3f;
                }
            }
        }

        string folder = Path.Combine(root, sub);
        peft.SaveAdapter(folder);
        return folder;
    }

    internal static LoraConfig Lora(string targets = "q_proj,v_proj", int r = 4) => Testing.TinyLlama.Lora(targets, r, alpha: 8);

    /// <summary>Three same-sized LoRA adapters a, b, c (and more on demand) registered in a fresh registry.</summary>
    private static (AdapterRegistry Registry, long Bytes) Registry(TempFolder dir, long budgetAdapters = 0, int maxLoaded = 0, params string[] names)
    {
        var model = Base();
        var probe = new AdapterRegistry(model);
        long bytes = probe.Load("probe", MakeAdapter(dir.Path, "probe", Lora())).Bytes;
        var registry = new AdapterRegistry(model, new AdapterRegistryOptions { MemoryBudgetBytes = budgetAdapters == 0 ? 0 : (budgetAdapters * bytes) + (bytes / 2), MaxLoaded = maxLoaded });
        int seed = 1;
        foreach (string n in names.Length == 0 ? ["a", "b", "c"] : names)
        {
            registry.Register(n, MakeAdapter(dir.Path, n, Lora(), seed++));
        }

        return (registry, bytes);
    }

    private static string[] Resident(AdapterRegistry r) => [.. r.Snapshot().Select(s => $"{s.Name}{s.Version}")];

    [Theory]
    [InlineData(2, 0)]
    [InlineData(0, 2)]
    public void LeastRecentlyUsedIsEvictedFirst(int budgetAdapters, int maxLoaded)
    {
        using var dir = new TempFolder();
        var (r, _) = Registry(dir, budgetAdapters, maxLoaded);
        long changed = r.Changed;
        r.Acquire("a").Dispose();
        r.Acquire("b").Dispose();
        Assert.Equal(["a1", "b1"], Resident(r));
        r.Acquire("a").Dispose(); // a is now more recent than b
        Assert.Equal(changed + 2, r.Changed);
        r.Acquire("c").Dispose();
        Assert.Equal(["a1", "c1"], Resident(r));
        r.Acquire("b").Dispose();
        Assert.Equal(["b2", "c1"], Resident(r));
        Assert.Equal((2L, 1L, 2L), (r.Stats("b").Loads, r.Stats("b").Evictions, r.Stats("b").Acquisitions));
        Assert.Equal((1L, 1L, 2L), (r.Stats("a").Loads, r.Stats("a").Evictions, r.Stats("a").Acquisitions));
        Assert.Equal(changed + 4, r.Changed);
    }

    [Fact]
    public void PinnedAndLeasedVersionsAreNeverEvicted()
    {
        using var dir = new TempFolder();
        var (r, bytes) = Registry(dir, budgetAdapters: 2, names: ["a", "b", "c", "d"]);
        r.Register("a", Path.Combine(dir.Path, "a"), pinned: true);
        r.Acquire("a").Dispose();
        foreach (string n in new[] { "b", "c", "d", "b" })
        {
            r.Acquire(n).Dispose();
            Assert.Contains(r.Snapshot(), s => s.Name == "a" && s.Pinned && s.Current);
        }

        Assert.Equal(0, r.Stats("a").Evictions);

        // b is held by a lease and a is pinned: c cannot fit, and nothing is evicted by the failed attempt.
        using var held = r.Acquire("b");
        var snapshot = Resident(r);
        var e = Assert.Throws<InvalidOperationException>(() => r.Acquire("c"));
        Assert.Contains($"needs {bytes} bytes", e.Message);
        Assert.Contains($"memory budget is {(2 * bytes) + (bytes / 2)} bytes", e.Message);
        Assert.Contains("'a' v1", e.Message);
        Assert.Contains("pinned", e.Message);
        Assert.Contains("1 lease(s)", e.Message);
        Assert.Equal(snapshot, Resident(r));
    }

    [Fact]
    public void ALeasedVersionSurvivesReplaceAndUnloadUntilReleased()
    {
        using var dir = new TempFolder();
        var (r, bytes) = Registry(dir);
        string second = MakeAdapter(dir.Path, "a2", Lora(), seed: 99);
        var first = r.Acquire("a");
        var firstA = first.Adapter.Modules[0].A.ToArray();
        long changed = r.Changed;

        var replaced = r.Load("a", second);
        Assert.Equal(2, replaced.Version);
        Assert.Equal(changed + 1, r.Changed);
        Assert.Equal(["a1", "a2"], Resident(r));
        Assert.False(r.Snapshot()[0].Current);
        Assert.Equal(1, r.Snapshot()[0].Leases);
        using (var next = r.Acquire("a"))
        {
            Assert.Same(replaced, next.Adapter);
        }

        // The old version's factors are untouched while held; releasing frees it.
        Assert.Equal(firstA, first.Adapter.Modules[0].A.ToArray());
        Assert.NotEqual(firstA, replaced.Modules[0].A.ToArray());
        first.Dispose();
        first.Dispose();
        Assert.Equal(["a2"], Resident(r));
        Assert.Equal(bytes, r.ResidentBytes);

        // Unload while held: the name is gone at once, the version when released.
        var held = r.Acquire("a");
        Assert.True(r.Unload("a"));
        Assert.False(r.Unload("a"));
        Assert.DoesNotContain("a", r.Names);
        Assert.Throws<KeyNotFoundException>(() => r.Acquire("a"));
        Assert.Equal(["a2"], Resident(r));
        held.Dispose();
        Assert.Empty(r.Snapshot());
        Assert.Equal(0, r.ResidentBytes);

        // Replacing an unleased version frees the old one at once; versions never repeat for a name.
        Assert.Equal(3, r.Load("a", second).Version);
        Assert.Equal(4, r.Load("a", second).Version);
        Assert.Equal(["a4"], Resident(r));
    }

    [Fact]
    public void CountersAndSnapshot()
    {
        using var dir = new TempFolder();
        var (r, bytes) = Registry(dir);
        Assert.Null(r.Stats("b").LastUsed);
        var l1 = r.Acquire("b");
        var l2 = r.Acquire("b");
        r.RecordTokens(l1, 5);
        r.RecordTokens(l2, 7);
        var row = Assert.Single(r.Snapshot());
        Assert.Equal(("b", 1, 2, bytes, false, true), (row.Name, row.Version, row.Leases, row.Bytes, row.Pinned, row.Current));
        Assert.Equal(AdapterKind.Lora, row.Kind);
        Assert.Equal(Path.GetFullPath(Path.Combine(dir.Path, "b")), row.Folder);
        l1.Dispose();
        l2.Dispose();
        var stats = r.Stats("b");
        Assert.Equal((1L, 0L, 2L, 12L), (stats.Loads, stats.Evictions, stats.Acquisitions, stats.Tokens));
        Assert.NotNull(stats.LastUsed);
        Assert.Equal(0, r.Snapshot()[0].Leases);
        Assert.Throws<ArgumentOutOfRangeException>(() => r.RecordTokens(l1, -1));
    }

    [Fact]
    public void UnknownNamesAndTooLargeAdaptersAreClearErrors()
    {
        using var dir = new TempFolder();
        var (r, bytes) = Registry(dir);
        var e = Assert.Throws<KeyNotFoundException>(() => r.Acquire("zz"));
        Assert.Equal("no adapter named 'zz'; known adapters: [a, b, c].", e.Message);
        Assert.Throws<KeyNotFoundException>(() => r.Stats("zz"));
        Assert.Contains("none is registered", Assert.Throws<KeyNotFoundException>(() => new AdapterRegistry(Base()).Acquire("a")).Message);

        var small = new AdapterRegistry(Base(), new AdapterRegistryOptions { MemoryBudgetBytes = bytes - 1 });
        small.Register("a", Path.Combine(dir.Path, "a"));
        var big = Assert.Throws<InvalidOperationException>(() => small.Acquire("a"));
        Assert.Equal($"adapter 'a' needs {bytes} bytes but does not fit: the memory budget is {bytes - 1} bytes; 0 bytes in 0 version(s) cannot be evicted: [].", big.Message);
        Assert.Empty(small.Snapshot());
        Assert.Throws<DirectoryNotFoundException>(() => r.Register("m", Path.Combine(dir.Path, "missing")));
    }

    [Theory]
    [InlineData("lm_head", "lm_head")]
    [InlineData("q_proj,embed_tokens", "model.embed_tokens")]
    [InlineData("modules_to_save", "modules_to_save [lm_head]")]
    [InlineData("bias", "bias \"all\"")]
    public void UnsupportedAdaptersAreRefusedByModule(string what, string named)
    {
        using var dir = new TempFolder();
        var config = what switch
        {
            "modules_to_save" => Lora() with { ModulesToSave = ["lm_head"] },
            "bias" => Lora() with { Bias = "all" },
            _ => Lora(what),
        };
        string folder = MakeAdapter(dir.Path, "u", config);
        var serving = Base();
        var biases = serving.Model.Layers[0].SelfAttn.QProj.Bias!.Data.ToArray();
        var r = new AdapterRegistry(serving);
        var e = Assert.Throws<NotSupportedException>(() => r.Load("u", folder));
        Assert.Contains(named, e.Message);
        Assert.Empty(r.Snapshot());
        Assert.Equal(biases, serving.Model.Layers[0].SelfAttn.QProj.Bias!.Data);
        Assert.All(serving.NamedModules().Select(m => m.Module).OfType<ILoraLayer>(), l => Assert.Empty(l.AllAdapters));
    }

    [Fact]
    public void FoldersOutsideTheAdaptersDirectoryAreRefused()
    {
        using var dir = new TempFolder();
        string root = Path.Combine(dir.Path, "adapters");
        Directory.CreateDirectory(root);
        string inside = MakeAdapter(root, "in", Lora());
        string outside = MakeAdapter(dir.Path, "out", Lora());
        var r = new AdapterRegistry(Base(), new AdapterRegistryOptions { AdaptersDir = root });

        r.Register("rel", "in");
        r.Register("abs", inside);
        Directory.CreateSymbolicLink(Path.Combine(root, "link-in"), inside);
        r.Register("link-in", "link-in");
        using (var lease = r.Acquire("rel"))
        {
            Assert.Equal(inside, lease.Adapter.SourceFolder);
        }

        Directory.CreateSymbolicLink(Path.Combine(root, "link-out"), outside);
        Directory.CreateSymbolicLink(Path.Combine(root, "parent"), dir.Path);
        Directory.CreateDirectory(Path.Combine(root, "sneaky"));
        File.CreateSymbolicLink(Path.Combine(root, "sneaky", Peft.Lora.ConfigFile), Path.Combine(outside, Peft.Lora.ConfigFile));
        File.CreateSymbolicLink(Path.Combine(root, "sneaky", Peft.Lora.WeightsFile), Path.Combine(outside, Peft.Lora.WeightsFile));
        foreach (string bad in new[] { "../out", outside, "link-out", Path.Combine("parent", "out"), Path.Combine("in", "..", "..", "out"), "sneaky" })
        {
            var e = Assert.Throws<UnauthorizedAccessException>(() => r.Register("bad", bad));
            Assert.Contains("outside the adapters directory", e.Message);
            Assert.Throws<UnauthorizedAccessException>(() => r.Load("bad", bad));
        }

        Assert.DoesNotContain("bad", r.Names);

        // Register keeps the resolved folder: a link swapped afterwards changes nothing.
        string swap = Path.Combine(root, "swap");
        Directory.CreateSymbolicLink(swap, inside);
        r.Register("swap", "swap");
        Directory.Delete(swap);
        Directory.CreateSymbolicLink(swap, outside);
        using var swapped = r.Acquire("swap");
        Assert.Equal(inside, swapped.Adapter.SourceFolder);
    }

    [Fact]
    public async Task ConcurrentAcquireReleaseAndReplaceLeaveOnlyCurrentVersions()
    {
        using var dir = new TempFolder();
        var (r, _) = Registry(dir, budgetAdapters: 2);
        string again = MakeAdapter(dir.Path, "a-again", Lora(), seed: 5);
        var workers = Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 30; i++)
            {
                string name = ((t + i) % 3) switch { 0 => "a", 1 => "b", _ => "c" };
                try
                {
                    using var lease = r.Acquire(name);
                    r.RecordTokens(lease, 1);
                    Assert.Equal(name, lease.Name);
                }
                catch (InvalidOperationException)
                {
                    // Three workers may hold two adapters and a third cannot fit: a clear refusal, retried next round.
                }
            }
        })).ToList();
        for (int i = 0; i < 5; i++)
        {
            try
            {
                r.Load("a", again);
            }
            catch (InvalidOperationException)
            {
            }
        }

        await Task.WhenAll(workers);
        Assert.All(r.Snapshot(), s => Assert.True(s.Current && s.Leases == 0, $"{s.Name} v{s.Version}"));
        Assert.True(r.Snapshot().Count <= 2);
    }
}
