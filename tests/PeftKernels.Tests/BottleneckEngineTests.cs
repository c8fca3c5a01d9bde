// Bottleneck adapters served by the engine: requests naming a bottleneck adapter, a fused composition,
// a LoRA adapter or no adapter run in one continuous batch, and each sequence's tokens equal the model
// run alone with that adapter (the library's KV-cache generation); on the wide path (more than 4 rows
// per step) and on the decode path (few rows). A Parallel composition is refused by name.
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

public sealed class BottleneckEngineTests : IDisposable
{
    private static readonly LlamaConfig Config = LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 64 };

    private readonly TempFolder folder = new();

    public BottleneckEngineTests()
    {
        var model = TinyLlama.Model(Config);
        var set = BottleneckAdapters.Of(model);
        set.Add("bn", BottleneckConfig.Houlsby() with { ReductionFactor = 8 }, seed: 1);
        set.Add("pf", BottleneckConfig.Pfeiffer() with { ReductionFactor = 8, ScalingKind = BottleneckScalingKind.Channel }, seed: 2);
        BottleneckAdapterTests.Randomize(set, 5);
        set.ActiveSetup = "bn";
        set.Save(Path("bn"));
        var fuse = AdapterSetup.Fuse("bn", "pf");
        set.AddFusion(fuse, seed: 3);
        BottleneckAdapterTests.Randomize(set, 6);
        set.ActiveSetup = AdapterSetup.Stack(fuse);
        set.Save(Path("fused"));
        set.ActiveSetup = AdapterSetup.Parallel("bn", "pf");
        set.Save(Path("parallel"));
        set.Detach();

        var peft = new PeftModel(model);
        peft.AddAdapter("default", TinyLlama.Lora("q_proj,v_proj,down_proj", r: 4), seed: 4);
        TinyLlama.Randomize(model, "default", 7);
        peft.SaveAdapter(Path("lora"));
    }

    public void Dispose() => folder.Dispose();

    private string Path(string name) => System.IO.Path.Combine(folder.Path, name);

    /// <summary>The library's greedy generation with the adapter in <paramref name="adapter"/> (or none).</summary>
    private int[] Alone(string? adapter, int[] prompt, int tokens)
    {
        var model = TinyLlama.Model(Config);
        if (adapter == "lora")
        {
            new PeftModel(model).LoadAdapter(Path(adapter));
        }
        else if (adapter != null)
        {
            ModelAdapterFolders.Load(model, Path(adapter));
        }

        return model.Generate(prompt, tokens);
    }

    [Theory]
    [InlineData(6)]
    [InlineData(2)]
    public void BottleneckFusedLoraAndBaseRequestsInOneBatchMatchTheModelRunAlone(int count)
    {
        using var engine = new InferenceEngine(TinyLlama.Model(Config), new EngineOptions { MaxRunningSequences = 8, MaxBatchTokens = 64, MaxSequenceLength = 32 });
        foreach (var name in new[] { "bn", "fused", "lora" })
        {
            engine.Adapters.Load(name, Path(name));
        }

        string?[] adapters = ["bn", "lora", "fused", null, "bn", "fused"];
        var requests = Enumerable.Range(0, count)
            .Select(i => new EngineRequest([1 + i, 7, 3, 11 + i], adapters[i], new SamplingParams(MaxTokens: 5))).ToList();
        var results = engine.Run(requests);
        for (int i = 0; i < count; i++)
        {
            Assert.Equal(Alone(adapters[i], requests[i].PromptTokens, 5), results[i].Tokens);
        }

        var loaded = engine.Adapters.Load("bn", Path("bn"));
        Assert.Equal(AdapterKind.Bottleneck, loaded.Kind);

        // The registry's memory budget counts the adapter's own weights (fp32), not 0.
        var alone = TinyLlama.Model(Config);
        long own = 4L * BottleneckAdapters.Load(alone, Path("bn")).Parameters.Sum(p => (long)p.Count);
        Assert.True(own > 0);
        Assert.Equal(own, loaded.Bytes);
    }

    [Fact]
    public void AParallelCompositionIsRefused()
    {
        using var engine = new InferenceEngine(TinyLlama.Model(Config), new EngineOptions { MaxRunningSequences = 4, MaxBatchTokens = 64, MaxSequenceLength = 32 });
        Assert.Contains("Parallel", Assert.Throws<NotSupportedException>(() => engine.Adapters.Load("p", Path("parallel"))).Message);
        Assert.True(InferenceEngine.Serves(Path("fused")));
        Assert.False(InferenceEngine.Serves(Path("lora")));
    }
}
