// Adapters at run time over HTTP: concurrent clients on different adapters get what each gets alone;
// load / replace / unload during traffic lose no request; load paths are confined to --adapters-dir;
// per-request mixes ("lora", "merged_adapters") equal the adapter or the merged adapter they stand for.
using PeftKernels.Autograd;

namespace PeftKernels.Tests.Server;

public sealed class ServerAdapterTests
{
    private static async Task<string> Text(ServerFixture f, object body)
    {
        var (status, json) = await f.Post("/v1/completions", body);
        Assert.True(status == 200, $"status {status}: {json}");
        return json.GetProperty("choices")[0].GetProperty("text").GetString()!;
    }

    [Fact]
    public async Task ConcurrentClientsOnDifferentAdapters_GetExactlyWhatEachGetsAlone()
    {
        await using var f = await ServerFixture.Start();
        string?[] models = [null, "r1", "r8", "r32", "dora", "ia3"];
        object Body(int i) => new { model = models[i % models.Length] ?? ServerFixture.BaseName, prompt = $"client {i}", max_tokens = 12, temperature = 0.9, top_p = 0.95, seed = 100 + i };
        var alone = new List<string>();
        for (int i = 0; i < 12; i++)
        {
            alone.Add(await Text(f, Body(i)));
        }

        var together = await Task.WhenAll(Enumerable.Range(0, 12).Select(i => Text(f, Body(i))));
        Assert.Equal(alone, together);
        Assert.True(alone.Distinct().Count() > 6, "the seeds and adapters should give different texts");
    }

    [Fact]
    public async Task LoadReplaceUnload_DuringTraffic_LoseNoRequest()
    {
        await using var f = await ServerFixture.Start();
        string expectedR1 = f.Greedy("steady", 10, "r1");
        using var stop = new CancellationTokenSource();
        var traffic = Enumerable.Range(0, 4).Select(async _ =>
        {
            int count = 0;
            while (!stop.IsCancellationRequested)
            {
                Assert.Equal(expectedR1, await Text(f, new { model = "r1", prompt = "steady", max_tokens = 10, temperature = 0 }));
                count++;
            }

            return count;
        }).ToList();
        for (int round = 0; round < 3; round++)
        {
            Assert.Equal(200, (await f.Post("/v1/load_lora_adapter", new { lora_name = "hot", lora_path = "r32" })).Status);
            Assert.Equal(f.Greedy("x", 4, "r32"), await Text(f, new { model = "hot", prompt = "x", max_tokens = 4, temperature = 0 }));
            var (replaced, body) = await f.Post("/v1/load_lora_adapter", new { lora_name = "hot", lora_path = "r8" });
            Assert.Equal(200, replaced);
            Assert.True(body.GetProperty("replaced").GetBoolean());
            Assert.Equal(f.Greedy("x", 4, "r8"), await Text(f, new { model = "hot", prompt = "x", max_tokens = 4, temperature = 0 }));
            Assert.Equal(200, (await f.Post("/v1/load_lora_adapter", new { lora_name = "r1", lora_path = "r1" })).Status); // replace under traffic
            Assert.Equal(200, (await f.Post("/v1/unload_lora_adapter", new { lora_name = "hot" })).Status);
            Assert.Equal(404, (await f.Post("/v1/completions", new { model = "hot", prompt = "x" })).Status);
        }

        await stop.CancelAsync();
        var counts = await Task.WhenAll(traffic);
        Assert.All(counts, c => Assert.True(c > 0));
    }

    [Fact]
    public async Task LoadPaths_AreConfinedToTheAdaptersDir()
    {
        await using var f = await ServerFixture.Start();
        string root = Path.GetDirectoryName(f.Engine.Folder("r1"))!;
        using var outside = new TempFolder();
        File.Copy(Path.Combine(f.Engine.Folder("r1"), "adapter_config.json"), outside.File("adapter_config.json"));
        File.Copy(Path.Combine(f.Engine.Folder("r1"), "adapter_model.safetensors"), outside.File("adapter_model.safetensors"));
        string link = Path.Combine(root, "link-out");
        Directory.CreateSymbolicLink(link, outside.Path);
        try
        {
            foreach (string path in new[] { "../" + Path.GetFileName(outside.Path), outside.Path, "link-out", "r1/../../" + Path.GetFileName(outside.Path) })
            {
                var (status, body) = await f.Post("/v1/load_lora_adapter", new { lora_name = "escape", lora_path = path });
                Assert.True(status == 400, $"{path}: {status}");
                Assert.Equal("lora_path", body.GetProperty("error").GetProperty("param").GetString());
            }

            Assert.Equal(400, (await f.Post("/v1/load_lora_adapter", new { lora_name = "missing", lora_path = "no-such-folder" })).Status);
            Assert.Equal(400, (await f.Post("/v1/load_lora_adapter", new { lora_name = ServerFixture.BaseName, lora_path = "r1" })).Status);
            Assert.Equal(400, (await f.Post("/v1/load_lora_adapter", new { lora_name = "~mix-x", lora_path = "r1" })).Status);
            Assert.Equal(200, (await f.Post("/v1/load_lora_adapter", new { lora_name = "inside", lora_path = Path.Combine(root, "r1") })).Status);
            Assert.DoesNotContain("escape", f.Server.AdapterNames);
        }
        finally
        {
            Directory.Delete(link);
        }
    }

    [Fact]
    public async Task Mixes_EqualTheAdapterOrTheMergedAdapterTheyStandFor()
    {
        await using var f = await ServerFixture.Start();
        string r1 = f.Greedy("mix", 10, "r1");
        Assert.Equal(r1, await Text(f, new { prompt = "mix", max_tokens = 10, temperature = 0, lora = new object[] { new { name = "r1", scale = 1.0 }, new { name = "r32", scale = 0.0 } } }));
        int id = f.Server.AdapterNames.ToList().IndexOf("r1");
        Assert.Equal(r1, await Text(f, new { prompt = "mix", max_tokens = 10, temperature = 0, lora = new[] { new { id, scale = 1.0 } } }));

        // The reference: PEFT's add_weighted_adapter ("cat": the exact weighted sum of the deltas) on the reference model.
        using (Tape.NoGrad())
        {
            f.Engine.Peft.AddWeightedAdapter(["r1", "r32"], [0.5, -1.25], "ref_mix", "cat");
        }

        string merged = f.Greedy("mix", 10, "ref_mix");
        var body = new { prompt = "mix", max_tokens = 10, temperature = 0, merged_adapters = new { ids = new[] { "r1", "r32" }, weights = new[] { 0.5, -1.25 }, merge_strategy = "linear" } };
        Assert.Equal(merged, await Text(f, body));
        Assert.Equal(merged, await Text(f, body)); // the second request reuses the registered mix
        Assert.Equal(2, f.Server.Engine.Adapters.Names.Count(n => n.StartsWith("~mix-", StringComparison.Ordinal))); // r1 × 1 (by name and by id), and the r1/r32 mix
        Assert.DoesNotContain(f.Server.AdapterNames, n => n.StartsWith('~'));

        var (status, error) = await f.Post("/v1/completions", new { prompt = "mix", lora = new[] { new { name = "dora", scale = 0.5 } } });
        Assert.Equal(400, status);
        Assert.Contains("DoRA", error.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Equal(400, (await f.Post("/v1/completions", new { prompt = "mix", merged_adapters = new { ids = new[] { "ia3", "r1" }, weights = new[] { 1.0, 1.0 } } })).Status);
        Assert.Equal(404, (await f.Post("/v1/completions", new { prompt = "mix", lora = new[] { new { name = "nope", scale = 1.0 } } })).Status);
        Assert.Equal(400, (await f.Post("/v1/completions", new { model = "r8", prompt = "mix", lora = new[] { new { name = "r1", scale = 1.0 } } })).Status);
        Assert.Equal(400, (await f.Post("/v1/completions", new { prompt = "mix", merged_adapters = new { ids = new[] { "r1" }, weights = new[] { 1.0 }, merge_strategy = "ties" } })).Status);
    }
}
