// X-LoRA served by the engine (docs/formats/xlora.md#serving): requests naming X-LoRA folders, a LoRA folder or no
// adapter run in one continuous batch, and each sequence's greedy tokens equal the library's two-cache generation
// (XLoraModel attached, LlamaForCausalLM.Generate) while its logits at every step equal the library's full two-pass
// forward over the tokens so far (exact incremental decoding: prefill in one step or in chunks, decode steps, block
// boundaries, preemption). Configs: plain, layerwise with top-k, a deeper classifier with a nonzero scaling_pass_value
// (the scaling pass then runs the experts too). Both caches of an X-LoRA sequence are freed when it ends or is cancelled.
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

public sealed class XLoraEngineTests : IDisposable
{
    private const int NewTokens = 5;

    private static readonly LlamaConfig Config = LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 64 };

    private readonly TempFolder folder = new();
    private readonly string[] experts;

    public XLoraEngineTests()
    {
        string[] targets = ["q_proj,v_proj,down_proj", "k_proj,v_proj,o_proj,up_proj"];
        experts = new string[targets.Length];
        for (int j = 0; j < targets.Length; j++)
        {
            var peft = new PeftModel(Base(), TinyLlama.Lora(targets[j], r: 4, alpha: 8) with { LoraBias = j == 1 });
            TinyLlama.Randomize(peft.Model, "default", 100 + (10 * j));
            experts[j] = Path($"e{j}");
            peft.SaveAdapter(experts[j]);
        }

        var lora = new PeftModel(Base(), TinyLlama.Lora("q_proj,v_proj,gate_proj", r: 4));
        TinyLlama.Randomize(lora.Model, "default", 7);
        lora.SaveAdapter(Path("lora"));
        SaveXLora("plain", new XLoraConfig(), seed: 1);
        SaveXLora("layerwise-topk", new XLoraConfig { LayerwiseScalings = true, TopKLora = 1, SoftmaxTemperature = 0.5 }, seed: 2);
        SaveXLora("softmax-topk", new XLoraConfig { TopKLora = 1, EnableSoftmaxTopK = true }, seed: 3);
        SaveXLora("deep-pass", new XLoraConfig { XLoraDepth = 2, XLoraSize = 8, ScalingPassValue = 0.5, GlobalScalingWeight = 0.8 }, seed: 4);
    }

    public void Dispose() => folder.Dispose();

    private static LlamaForCausalLM Base() => TinyLlama.Model(Config, scale: 5f);

    private string Path(string name) => System.IO.Path.Combine(folder.Path, name);

    private void SaveXLora(string name, XLoraConfig config, int seed)
    {
        var xlora = XLoraModel.Attach(Base(), config, experts, seed);
        XLoraTests.RandomizeClassifier(xlora, 10 * seed, 0.5f);
        xlora.Save(Path(name));
    }

    /// <summary>The library's model with the adapter in <paramref name="adapter"/> (X-LoRA attached, LoRA loaded, or the base).</summary>
    private LlamaForCausalLM Library(string? adapter)
    {
        var model = Base();
        if (adapter == "lora")
        {
            new PeftModel(model).LoadAdapter(Path(adapter));
        }
        else if (adapter != null)
        {
            XLoraModel.Load(model, Path(adapter));
        }

        return model;
    }

    /// <summary>Runs the requests on an engine, recording every sequence's logits per step.</summary>
    private static (IReadOnlyList<EngineResult> Results, Dictionary<long, List<float[]>> Logits, InferenceEngine Engine) Serve(
        EngineOptions options, IEnumerable<(string Name, string Folder)> adapters, IReadOnlyList<EngineRequest> requests)
    {
        var engine = new InferenceEngine(Base(), options);
        foreach (var (name, dir) in adapters)
        {
            engine.Adapters.Load(name, dir);
        }

        var logits = new Dictionary<long, List<float[]>>();
        engine.ObserveLogits = (s, row) =>
        {
            if (!logits.TryGetValue(s.Id, out var list))
            {
                logits[s.Id] = list = [];
            }

            list.Add(row.ToArray());
        };
        return (engine.Run(requests), logits, engine);
    }

    /// <summary>Asserts the tokens equal the library's generation and the logits of every step equal its full forward.</summary>
    private void AssertMatchesLibrary(string? adapter, int[] prompt, EngineResult result, List<float[]> logits)
    {
        var model = Library(adapter);
        using var scope = Tape.NoGrad();
        Assert.Equal(model.Generate(prompt, NewTokens), result.Tokens);
        Assert.Equal(NewTokens, logits.Count);
        for (int k = 0; k < NewTokens; k++)
        {
            int[] seen = [.. prompt, .. result.Tokens.Take(k)];
            var full = model.Forward(seen).Data.AsSpan((seen.Length - 1) * Config.VocabSize, Config.VocabSize).ToArray();
            double scale = full.Max(Math.Abs);
            TestUtil.AssertClose(logits[k], full, 1e-4 * scale, 1e-4, $"{adapter ?? "base"} step {k}");
        }
    }

    [Theory]
    [InlineData("plain", 64)]
    [InlineData("plain", 5)]
    [InlineData("layerwise-topk", 64)]
    [InlineData("softmax-topk", 7)]
    [InlineData("deep-pass", 64)]
    [InlineData("deep-pass", 6)]
    public void XLoraLoraAndBaseRequestsInOneBatchMatchTheLibraryAtEveryStep(string config, int maxBatchTokens)
    {
        string?[] adapters = [config, "lora", null, config];
        int[][] prompts = [[1, 7, 3, 11, 5, 9], [2, 7, 3, 12], [3, 7, 3, 13, 8], [4, 20, 6]];
        var requests = Enumerable.Range(0, adapters.Length).Select(i => new EngineRequest(prompts[i], adapters[i], new SamplingParams(MaxTokens: NewTokens))).ToList();
        var options = new EngineOptions { MaxRunningSequences = 4, MaxBatchTokens = maxBatchTokens, MaxSequenceLength = 32, BlockSize = 4 };
        var (results, logits, engine) = Serve(options, [(config, Path(config)), ("lora", Path("lora"))], requests);
        using (engine)
        {
            for (int i = 0; i < adapters.Length; i++)
            {
                AssertMatchesLibrary(adapters[i], prompts[i], results[i], logits[results[i].Id]);
            }

            // Every X-LoRA row went through the scaling pass once, and both caches of every sequence are back in the pool.
            Assert.Equal(prompts[0].Length + prompts[3].Length + (2 * (NewTokens - 1)), engine.Stats.ScalingPassRows);
            Assert.Equal(0, engine.Pool.UsedBlocks);
            var loaded = engine.Adapters.Load(config, Path(config));
            Assert.Equal(AdapterKind.XLora, loaded.Kind);

            // The registry's memory budget counts the classifier and every expert's LoRA factors (fp32), not 0.
            var alone = Base();
            var shared = alone.NamedParameters().Select(p => p.Parameter).ToHashSet(ReferenceEqualityComparer.Instance);
            XLoraModel.Load(alone, Path(config));
            long own = 4L * alone.NamedParameters().Where(p => !shared.Contains(p.Parameter)).Sum(p => (long)p.Parameter.Count);
            Assert.True(own > 4L * XLoraModel.Load(Base(), Path(config)).Parameters.Sum(p => (long)p.Count), "the experts count too, not only the classifier");
            Assert.Equal(own, loaded.Bytes);
        }

        // The check has teeth: the X-LoRA's first logits are far from the base model's.
        using var scope = Tape.NoGrad();
        var baseRow = Base().Forward(prompts[0]).Data[^Config.VocabSize..];
        Assert.True(logits[results[0].Id][0].Zip(baseRow, (a, b) => Math.Abs(a - b)).Max() > 1e-2f, "X-LoRA does not move the logits");
    }

    [Fact]
    public void PreemptedAndCancelledXLoraSequencesFreeBothCachesAndStillMatch()
    {
        // 10 blocks of 4 positions: the two X-LoRA sequences need 6 each (two caches of 11 positions), so someone is preempted.
        string?[] adapters = ["plain", "deep-pass", "lora", null];
        int[][] prompts = [[1, 7, 3, 11, 5, 9], [5, 6, 7, 8, 9, 10], [2, 7, 3, 12], [3, 7, 3, 13, 8]];
        var requests = Enumerable.Range(0, adapters.Length).Select(i => new EngineRequest(prompts[i], adapters[i], new SamplingParams(MaxTokens: NewTokens))).ToList();
        var options = new EngineOptions { MaxRunningSequences = 4, MaxBatchTokens = 64, MaxSequenceLength = 16, BlockSize = 4, KvBlocks = 10 };
        var (results, logits, engine) = Serve(options, [("plain", Path("plain")), ("deep-pass", Path("deep-pass")), ("lora", Path("lora"))], requests);
        using (engine)
        {
            Assert.True(engine.Stats.Preemptions > 0, "the pool was meant to be too small for every sequence at once");
            for (int i = 0; i < adapters.Length; i++)
            {
                Assert.Equal(FinishReason.Length, results[i].Finish);
                var model = Library(adapters[i]);
                using var scope = Tape.NoGrad();
                Assert.Equal(model.Generate(prompts[i], NewTokens), results[i].Tokens);
            }

            Assert.Equal(0, engine.Pool.UsedBlocks);

            // Cancelled mid-decode: both caches go back.
            var running = engine.Submit(new EngineRequest(prompts[0], "plain", new SamplingParams(MaxTokens: 8)));
            engine.Step();
            engine.Step();
            Assert.True(engine.Pool.UsedBlocks >= 4, $"an X-LoRA sequence of 7 positions holds two caches of 2 blocks; {engine.Pool.UsedBlocks} blocks are used");
            running.Cancel();
            engine.RunUntilIdle();
            Assert.Equal(FinishReason.Cancelled, running.Result!.Finish);
            Assert.Equal(0, engine.Pool.UsedBlocks);
            Assert.Equal(running.Result.Tokens.Length, logits[running.Id].Count);
        }
    }

    [Fact]
    public void TheEngineServesXLoraFoldersAndRefusesAModelWithXLoraAttached()
    {
        Assert.True(InferenceEngine.Serves(Path("plain")));
        Assert.False(InferenceEngine.Serves(Path("lora")));
        var model = Base();
        XLoraModel.Load(model, Path("plain"));
        Assert.Contains("would ignore the X-LoRA attached", Assert.Throws<NotSupportedException>(() => new InferenceEngine(model)).Message, StringComparison.Ordinal);
    }
}
