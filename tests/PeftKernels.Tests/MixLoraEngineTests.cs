// MixLoRA adapters served by the engine: requests naming a MixLoRA adapter (attention LoRA plus routed MLP
// experts), a second MixLoRA adapter (MLP experts only: without the engine's MLP hook it would equal the
// base), a LoRA adapter or no adapter run in one batch, and each sequence's logits and greedy tokens equal
// the library's model run alone with that adapter (MixLoraAdapter.Load on a fresh model: full forward and
// Generate); prefill, wide decode steps and decode-path steps (at most 4 rows), on an fp32 and a 4-bit base.
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

public sealed class MixLoraEngineTests : IDisposable
{
    private static readonly LlamaConfig Config = LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 128 };

    private readonly TempFolder folder = new();

    public MixLoraEngineTests()
    {
        Save("mix", new MixLoraConfig { NumExperts = 4, TopK = 2, R = 4, LoraAlpha = 8, LoraDropout = 0 }, seed: 3);
        Save("mlp", new MixLoraConfig { NumExperts = 3, TopK = 1, R = 2, LoraAlpha = 4, LoraDropout = 0, UseRsLora = true, TargetModules = ["up_proj", "down_proj"] }, seed: 5);
        var model = TinyLlama.Model(Config);
        var peft = new PeftModel(model);
        peft.AddAdapter("default", TinyLlama.Lora("q_proj,v_proj,down_proj", r: 4), seed: 4);
        TinyLlama.Randomize(model, "default", 7);
        peft.SaveAdapter(Path("lora"));
    }

    public void Dispose() => folder.Dispose();

    private string Path(string name) => System.IO.Path.Combine(folder.Path, name);

    /// <summary>A fresh base model (quantized to 4 bits when asked).</summary>
    private static LlamaForCausalLM Base(bool quantized)
    {
        var model = TinyLlama.Model(Config);
        if (quantized)
        {
            model.QuantizeLinears();
        }

        return model;
    }

    /// <summary>Attaches MixLoRA to <paramref name="model"/> with random routers and B factors (every expert differs; shared with DeviceEngineMethodsTests).</summary>
    internal static MixLoraAdapter AttachRandomized(LlamaForCausalLM model, MixLoraConfig config, int seed)
    {
        var adapter = MixLoraAdapter.Attach(model, config, seed);
        int i = 0;
        foreach (var (key, p) in model.NamedParameters().Where(p => p.Parameter.Trainable))
        {
            bool router = key.Contains("moe_gate", StringComparison.Ordinal);
            if (router || key.Contains("lora_B", StringComparison.Ordinal))
            {
                TestUtil.Random(p.Data.Length, seed + (++i), router ? 1f : 0.3f).CopyTo(p.Data, 0);
            }
        }

        return adapter;
    }

    /// <summary>Saves a MixLoRA adapter with random routers and B factors (every expert differs) under <paramref name="name"/>.</summary>
    private void Save(string name, MixLoraConfig config, int seed)
    {
        var model = TinyLlama.Model(Config);
        var adapter = AttachRandomized(model, config, seed);

        adapter.Save(Path(name));
    }

    /// <summary>The library's model alone with the adapter <paramref name="adapter"/> (or none).</summary>
    private LlamaForCausalLM Alone(string? adapter, bool quantized = false)
    {
        var model = Base(quantized);
        if (adapter == "lora")
        {
            new PeftModel(model).LoadAdapter(Path(adapter));
        }
        else if (adapter != null)
        {
            MixLoraAdapter.Load(model, Path(adapter));
        }

        return model;
    }

    private float[] Logits(string? adapter, int[] tokens, bool quantized)
    {
        using var scope = Tape.NoGrad();
        return Alone(adapter, quantized).Forward(tokens).Data;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MixLoraLoraAndBaseRowsInOneBatchHaveTheLogitsOfTheModelRunAlone(bool quantized)
    {
        var options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8 };
        using var engine = new InferenceEngine(Base(quantized), options);
        foreach (var name in new[] { "mix", "mlp", "lora" })
        {
            engine.Adapters.Load(name, Path(name));
        }

        var model = Base(quantized);
        var forward = new BatchForward(model, 64, 8, 128, options);
        var pool = new KvBlockPool(Config.NumHiddenLayers, Config.NumKeyValueHeads, Config.HeadDim, 4, 64);
        string?[] adapters = ["mix", "lora", null, "mlp", "mix", "mlp"];
        var rng = new Random(5);
        var tokens = adapters.Select((_, i) => Enumerable.Range(0, 2 + ((i * 3) % 7)).Select(_ => rng.Next(Config.VocabSize)).ToArray()).ToArray();
        var sequences = adapters.Select(_ => pool.CreateSequence()).ToArray();
        var slots = adapters.Select(a => engine.TableAndSlot(a).Slot).ToArray();
        var table = engine.TableAndSlot(null).Table;
        var batch = new StepBatch(64, 8);

        // Step 1: every prompt whole (wide path); then one wide decode step; then decode-path steps of 4 rows and 2 rows.
        int[][] steps = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 1, 3, 4], [5, 0], [3]];
        for (int step = 0; step < steps.Length; step++)
        {
            batch.Clear();
            foreach (int i in steps[step])
            {
                int[] add = step == 0 ? tokens[i] : [((7 * i) + (3 * step) + 1) % Config.VocabSize];
                int start = step == 0 ? 0 : tokens[i].Length;
                if (step > 0)
                {
                    tokens[i] = [.. tokens[i], add[0]];
                }

                foreach (int t in add)
                {
                    sequences[i].Append(t);
                }

                batch.Add(sequences[i], add, start, slots[i], wantsLogits: true);
            }

            var logits = forward.Run(batch, table).ToArray();
            for (int g = 0; g < steps[step].Length; g++)
            {
                int i = steps[step][g];
                AssertRow(Logits(adapters[i], tokens[i], quantized), tokens[i].Length - 1, logits, batch.LogitRow[g], $"step {step}, sequence {i} ({adapters[i] ?? "base"})");
            }
        }

        // The check has teeth: each MixLoRA adapter (the MLP-only one too) moves the logits well beyond the tolerance.
        foreach (var name in new[] { "mix", "mlp" })
        {
            var moved = Logits(name, tokens[0], quantized).Zip(Logits(null, tokens[0], quantized), (a, b) => Math.Abs(a - b)).Max();
            Assert.True(moved > 1e-2f, $"adapter {name} changes the logits by only {moved}");
        }
    }

    [Theory]
    [InlineData(6)]
    [InlineData(2)]
    public void MixLoraLoraAndBaseRequestsGenerateTheTokensOfTheModelRunAlone(int count)
    {
        using var engine = new InferenceEngine(Base(false), new EngineOptions { MaxRunningSequences = 8, MaxBatchTokens = 64, MaxSequenceLength = 32 });
        foreach (var name in new[] { "mix", "mlp", "lora" })
        {
            engine.Adapters.Load(name, Path(name));
        }

        string?[] adapters = ["mix", "lora", null, "mlp", "mix", "mlp"];
        var requests = Enumerable.Range(0, count)
            .Select(i => new EngineRequest([1 + i, 7, 3, 11 + i], adapters[i], new SamplingParams(MaxTokens: 6))).ToList();
        var results = engine.Run(requests);
        for (int i = 0; i < count; i++)
        {
            int[] expected;
            using (Tape.NoGrad())
            {
                expected = Alone(adapters[i]).Generate(requests[i].PromptTokens, 6);
            }

            Assert.Equal(expected, results[i].Tokens);
        }
    }

    [Fact]
    public void TheEngineServesMixLoraFoldersAndCountsTheirExperts()
    {
        Assert.True(InferenceEngine.Serves(Path("mix")));
        Assert.True(InferenceEngine.Serves(Path("mlp")));
        Assert.False(InferenceEngine.Serves(Path("lora")));

        using var engine = new InferenceEngine(Base(false), new EngineOptions { MaxRunningSequences = 4, MaxBatchTokens = 64, MaxSequenceLength = 32 });
        var mix = engine.Adapters.Load("mix", Path("mix"));
        Assert.Equal(AdapterKind.MixLora, mix.Kind);

        // Attention LoRA on q, k, v, o of both layers as LoRA modules; the budget counts the routers and experts too.
        Assert.Equal(2 * 4, mix.Modules.Count);
        Assert.All(mix.Modules, m => Assert.Equal(AdapterKind.Lora, m.Kind));
        Assert.Equal(2.0f, mix.Modules[0].Scale);
        long attention = mix.Modules.Sum(m => m.Bytes);
        // Per layer: router [4, H]; gate, up, down × 4 experts × (A [4, in] + B [out, 4]), in + out = H + I for each.
        long experts = 4L * 2 * ((4 * Config.HiddenSize) + (3 * 4 * 4 * (Config.HiddenSize + Config.IntermediateSize)));
        Assert.Equal(attention + experts, mix.Bytes);

        var mlp = engine.Adapters.Load("mlp", Path("mlp"));
        Assert.Empty(mlp.Modules);
        Assert.True(mlp.Bytes > 0);
    }

    [Fact]
    public void NonFiniteMixLoraValuesAreRefused()
    {
        var model = TinyLlama.Model(Config);
        var adapter = MixLoraAdapter.Attach(model, new MixLoraConfig { NumExperts = 2, TopK = 1, R = 2, LoraDropout = 0 });
        adapter.Blocks[1].Router.Data[3] = float.NaN;
        adapter.Save(Path("nan"));
        using var engine = new InferenceEngine(Base(false), new EngineOptions { MaxRunningSequences = 4, MaxBatchTokens = 64, MaxSequenceLength = 32 });
        var e = Assert.Throws<InvalidDataException>(() => engine.Adapters.Load("nan", Path("nan")));
        Assert.Contains("model.layers.1.mlp.mixlora.moe_gate.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("NaN or infinite", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Row <paramref name="actualRow"/> of the engine's logits equals row <paramref name="expectedRow"/> of the model's within 1e-4 relative.</summary>
    private static void AssertRow(float[] expectedAll, int expectedRow, float[] actualAll, int actualRow, string what)
    {
        int vocab = Config.VocabSize;
        var expected = expectedAll.AsSpan(expectedRow * vocab, vocab);
        var actual = actualAll.AsSpan(actualRow * vocab, vocab);
        float scale = 1f, worst = 0f;
        for (int j = 0; j < vocab; j++)
        {
            scale = Math.Max(scale, Math.Abs(expected[j]));
            worst = Math.Max(worst, Math.Abs(expected[j] - actual[j]));
        }

        Assert.True(worst <= 1e-4f * scale, $"{what}: max |logit difference| {worst} > {1e-4f * scale} (max |logit| {scale}).");
    }
}
