// Prompt, P- and prefix tuning served by the engine, mixed in one batch with LoRA and base requests: every sequence's
// tokens equal the library's KV-cache generation with that adapter alone; the virtual positions' keys and values are
// computed once per adapter version and shared through the paged cache's prefix blocks (copied only where no published
// block holds them), or copied into every sequence when prefix sharing is off.
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

public sealed class InferenceEnginePromptLearningTests
{
    private static readonly LlamaConfig Config = LlamaConfig.Tiny(40) with { HeadDim = 8, MaxPositionEmbeddings = 128 };

    private static readonly (string Name, string Type, bool Projection, int N)[] PromptAdapters =
    [
        ("prompt", PromptLearningConfig.PromptTuningType, false, 5),
        ("ptuning", PromptLearningConfig.PTuningType, false, 7),
        ("prefix", PromptLearningConfig.PrefixTuningType, false, 6),
        ("prefixproj", PromptLearningConfig.PrefixTuningType, true, 3),
    ];

    private static LlamaForCausalLM Model() => TinyLlama.Model(Config, seed: 3, scale: 5f);

    private static void SaveAdapters(string root)
    {
        for (int i = 0; i < PromptAdapters.Length; i++)
        {
            var (name, type, projection, n) = PromptAdapters[i];
            var model = Model();
            var adapter = PromptLearningAdapter.Attach(model, new PromptLearningConfig(type) { NumVirtualTokens = n, PrefixProjection = projection }, seed: 10 + i);
            adapter.Save(Path.Combine(root, name));
        }

        var lora = Model();
        var peft = new PeftModel(lora);
        peft.AddAdapter("default", TinyLlama.Lora("q_proj,v_proj,down_proj", r: 4), seed: 5);
        TinyLlama.Randomize(lora, "default", 50);
        peft.SaveAdapter(Path.Combine(root, "lora"));
    }

    /// <summary>The library's greedy generation with the folder's adapter alone (none for null).</summary>
    private static int[] Library(string root, string? name, int[] prompt, int tokens)
    {
        var model = Model();
        if (name != null)
        {
            string dir = Path.Combine(root, name);
            if (ModelAdapterFolders.Recognizes(dir))
            {
                ModelAdapterFolders.Load(model, dir);
            }
            else
            {
                new PeftModel(model).LoadAdapter(dir);
            }
        }

        return model.Generate(prompt, tokens);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void MixedBatchWithLoraAndBaseEqualsEachAdapterAlone(bool prefixSharing)
    {
        using var folder = new TempFolder();
        SaveAdapters(folder.Path);
        using var engine = new InferenceEngine(Model(), new EngineOptions { MaxRunningSequences = 16, MaxBatchTokens = 256, MaxSequenceLength = 64, BlockSize = 4, PrefixSharing = prefixSharing });
        foreach (var name in PromptAdapters.Select(a => a.Name).Append("lora"))
        {
            engine.Adapters.Load(name, Path.Combine(folder.Path, name));
        }

        string?[] names = ["prompt", "lora", "prefix", "prompt", null, "ptuning", "prefix", "prefixproj", "lora", "prompt"];
        var requests = names.Select((n, i) => new EngineRequest([1 + (i % 7), 9, 3 + i, 2, 30 - i], n, new SamplingParams(MaxTokens: 5))).ToList();
        var results = engine.Run(requests);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(Library(folder.Path, names[i], requests[i].PromptTokens, 5), results[i].Tokens);
        }

        // Virtual positions of all prompt-learning sequences: 3·5 + 2·6 + 7 + 3; with sharing, whole blocks of 4 come from the first sequence of each adapter.
        int total = (3 * 5) + (2 * 6) + 7 + 3;
        if (prefixSharing)
        {
            Assert.Equal(5 + 1 + 1 + 6 + 2 + 7 + 3, engine.Stats.VirtualPositionsCopied);
        }
        else
        {
            Assert.Equal(total, engine.Stats.VirtualPositionsCopied);
        }

        Assert.Equal(0, results.Sum(r => r.CachedPromptTokens));
    }

    [Fact]
    public void TheEngineAdapterIsAPromptLearningKindWithoutModules()
    {
        using var folder = new TempFolder();
        SaveAdapters(folder.Path);
        using var engine = new InferenceEngine(Model(), new EngineOptions { MaxSequenceLength = 64 });
        var adapter = engine.Adapters.Load("prefix", Path.Combine(folder.Path, "prefix"));
        Assert.Equal(AdapterKind.PromptLearning, adapter.Kind);
        Assert.Empty(adapter.Modules);
        Assert.Equal(6, adapter.Virtual!.Count);
        Assert.True(adapter.Virtual.TokenId(0) < 0);
        Assert.NotEqual(engine.Adapters.Load("prefix2", Path.Combine(folder.Path, "prefix")).Virtual!.TokenId(0), adapter.Virtual.TokenId(0));
    }

    [Fact]
    public void VirtualPositionsCountTowardsTheMaximumSequenceLength()
    {
        using var folder = new TempFolder();
        SaveAdapters(folder.Path);
        using var engine = new InferenceEngine(Model(), new EngineOptions { MaxSequenceLength = 10 });
        engine.Adapters.Load("ptuning", Path.Combine(folder.Path, "ptuning"));
        var results = engine.Run([new EngineRequest([1, 2, 3], "ptuning", new SamplingParams(MaxTokens: 4)), new EngineRequest([1, 2], "ptuning", new SamplingParams(MaxTokens: 4))]);
        Assert.Equal(FinishReason.Error, results[0].Finish);
        Assert.Contains("7 virtual positions", results[0].Error, StringComparison.Ordinal);
        Assert.Equal(FinishReason.Length, results[1].Finish);
        Assert.Equal(Library(folder.Path, "ptuning", [1, 2], 1), results[1].Tokens);
    }
}
