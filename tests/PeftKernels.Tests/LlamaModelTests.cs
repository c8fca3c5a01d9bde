using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public class LlamaModelTests
{
    /// <summary>A tiny config whose random weights are large enough (std 0.3) that attention and the MLP do real work.</summary>
    internal static LlamaForCausalLM TinyModel(LlamaConfig? config = null, int seed = 1, float scale = 15f) =>
        Testing.TinyLlama.Model(config, seed, scale);

    public static TheoryData<string> Variants() => ["llama-gqa", "qwen2-bias-tied", "mha-headdim"];

    private static LlamaConfig Variant(string name) => name switch
    {
        "llama-gqa" => LlamaConfig.Tiny(40) with { HeadDim = 16 },
        "qwen2-bias-tied" => LlamaConfig.Tiny(40) with { ModelType = "qwen2", AttentionBias = true, TieWordEmbeddings = true, HeadDim = 16, RopeTheta = 1e6 },
        _ => LlamaConfig.Tiny(40) with { NumKeyValueHeads = 4, HeadDim = 8, NumAttentionHeads = 4 },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void LogitsMatchTheDoublePrecisionReference(string variant)
    {
        var model = TinyModel(Variant(variant));
        int[] tokens = [1, 5, 9, 2, 39, 0, 7, 7, 3, 12, 30, 4, 4, 8, 21, 16, 2];
        var logits = model.Forward(tokens);
        var expected = LlamaReference.Logits(model, tokens);

        // fp32 activations through 2 layers of K ≤ 176 dots (plus fp32 RoPE angles and an
        // online softmax): relative error ~1e-6 per op; 1e-4 of the logit range bounds it.
        double range = expected.Max(Math.Abs);
        TestUtil.AssertClose(logits.Data, expected, 1e-4 * range, 1e-4, $"logits {variant}");
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void SavedFolderLoadsBackIdentically(string variant)
    {
        using var temp = new TempFolder();
        var model = TinyModel(Variant(variant));
        model.Save(temp.Path);
        var loaded = LlamaForCausalLM.Load(temp.Path);
        Assert.Equal(model.Config with { TorchDtype = "float32" }, loaded.Config);
        var a = model.NamedParameters().ToList();
        var b = loaded.NamedParameters().ToList();
        Assert.Equal(a.Select(e => e.Name), b.Select(e => e.Name));
        for (int i = 0; i < a.Count; i++)
        {
            Assert.Equal(a[i].Parameter.Shape, b[i].Parameter.Shape);
            Assert.Equal(a[i].Parameter.Data, b[i].Parameter.Data);
        }

        int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6];
        Assert.Equal(model.Forward(tokens).Data, loaded.Forward(tokens).Data);
    }

    [Fact]
    public void Bf16StorageComputesWithTheRoundedWeights()
    {
        using var temp = new TempFolder();
        TinyModel().Save(temp.Path);
        var bf16 = LlamaForCausalLM.Load(temp.Path, WeightStorage.BFloat16);
        Assert.Equal(TensorDType.BF16, bf16.Model.Layers[0].SelfAttn.QProj.Weight.DType);
        Assert.Equal(TensorDType.F32, bf16.Model.Norm.Weight.DType);
        int[] tokens = [5, 4, 3, 2, 1, 0, 11];
        var expected = LlamaReference.Logits(bf16, tokens);
        TestUtil.AssertClose(bf16.Forward(tokens).Data, expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "bf16 logits");

        // Saved again, bf16 stays bf16 on disk and loads back bit for bit.
        using var again = new TempFolder();
        bf16.Save(again.Path);
        var reloaded = LlamaForCausalLM.Load(again.Path);
        Assert.Equal("bfloat16", reloaded.Config.TorchDtype);
        Assert.Equal(bf16.LmHead.Weight.Bf16Bits, reloaded.LmHead.Weight.Bf16Bits);
    }

    [Fact]
    public void ShardedF16CheckpointLoadsAsFp16AndComputesWithIt()
    {
        using var temp = new TempFolder();
        var model = TinyModel();
        model.Save(temp.Path);
        File.Delete(temp.File("model.safetensors"));

        // Two shards of F16 tensors and an index, as transformers writes a sharded fp16 model.
        var all = model.NamedParameters().ToList();
        var weightMap = new Dictionary<string, string>();
        for (int s = 0; s < 2; s++)
        {
            string shard = $"model-0000{s + 1}-of-00002.safetensors";
            var part = all.Where((_, i) => i % 2 == s).ToList();
            IO.SafeTensorsWriter.Write(temp.File(shard), part.Select(p => IO.SafeTensor.FromHalf(p.Name, p.Parameter.Data.Select(v => (Half)v).ToArray(),
                [.. p.Parameter.Shape.Select(d => (long)d)])).ToList());
            part.ForEach(p => weightMap[p.Name] = shard);
        }

        File.WriteAllText(temp.File("model.safetensors.index.json"), System.Text.Json.JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));
        var loaded = LlamaForCausalLM.Load(temp.Path);
        foreach (var (name, p) in loaded.NamedParameters())
        {
            // Matrices stay fp16 (as stored); norm weights are widened to fp32, exactly.
            Assert.Equal(p.Shape.Length == 2 ? TensorDType.F16 : TensorDType.F32, p.DType);
            var original = all.First(e => e.Name == name).Parameter.Data;
            Assert.Equal(original.Select(v => (float)(Half)v), p.ToFloat32());
        }

        // The fp16 model computes with exactly the rounded weights, saves back as F16, and QLoRA-quantizes from fp16.
        int[] tokens = [4, 8, 15, 16, 23, 42 % 40];
        var expected = LlamaReference.Logits(loaded, tokens);
        TestUtil.AssertClose(loaded.Forward(tokens).Data, expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "f16 logits");
        using var again = new TempFolder();
        loaded.Save(again.Path);
        Assert.Equal("float16", LlamaConfig.Load(again.File("config.json")).TorchDtype);
        using (var file = IO.SafeTensorsFile.Open(again.File("model.safetensors")))
        {
            Assert.Equal(IO.SafeTensorDType.F16, file.GetInfo("lm_head.weight").DType);
        }

        loaded.QuantizeLinears();
        Assert.Equal("float16", loaded.Model.Layers[0].Mlp.UpProj.Weight.Quantized.DType);
    }

    [Fact]
    public void LoadingListsEveryMissingUnexpectedAndMisshapenTensor()
    {
        using var temp = new TempFolder();
        TinyModel().Save(temp.Path);
        var config = LlamaConfig.Load(temp.File("config.json"));
        (config with { NumHiddenLayers = 3, IntermediateSize = 100 }).Save(temp.File("config.json"));
        var ex = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.Load(temp.Path));
        Assert.Contains("missing tensor 'model.layers.2.self_attn.q_proj.weight'", ex.Message);
        Assert.Contains("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [176, 64], expected [100, 64]", ex.Message);

        (config with { NumHiddenLayers = 1 }).Save(temp.File("config.json"));
        ex = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.Load(temp.Path));
        Assert.Contains("the checkpoint does not match config.json: 9 problems: unexpected tensor 'model.layers.1.", ex.Message);
        Assert.EndsWith("; … and 4 more.", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CachedDecodingMatchesTheFullForward()
    {
        var model = TinyModel();
        int[] tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        var full = model.Forward(tokens).Data;
        int vocab = model.Config.VocabSize;
        using var scope = Tape.NoGrad();
        var cache = new KvCache(model.Config.NumHiddenLayers, 1, 32, model.Config.NumKeyValueHeads * model.Config.HeadDim);
        var prefill = model.Forward(tokens[..6], 1, cache).Data;
        TestUtil.AssertClose(prefill, full.AsSpan(0, 6 * vocab).ToArray(), 1e-4, 1e-4, "prefill");
        for (int t = 6; t < tokens.Length; t++)
        {
            var step = model.Forward([tokens[t]], 1, cache).Data;
            TestUtil.AssertClose(step, full.AsSpan(t * vocab, vocab).ToArray(), 1e-4 * full.Max(Math.Abs), 1e-4, $"decode position {t}");
        }

        Assert.Equal(tokens.Length, cache.Length);

        // Truncating back to the prompt and decoding again gives the same logits (the stale rows are overwritten).
        cache.Truncate(6);
        TestUtil.AssertClose(model.Forward([tokens[6]], 1, cache).Data, full.AsSpan(6 * vocab, vocab).ToArray(), 1e-4 * full.Max(Math.Abs), 1e-4, "after truncate");
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(8));
    }

    [Fact]
    public void GreedyGenerationFollowsTheArgmaxOfFullForwards()
    {
        var model = TinyModel();
        int[] prompt = [3, 14, 15];
        var generated = model.Generate(prompt, 6);
        var sequence = prompt.ToList();
        foreach (int token in generated)
        {
            var logits = model.Forward([.. sequence]).Data;
            var last = logits.AsSpan(logits.Length - model.Config.VocabSize);
            Assert.Equal(LlamaForCausalLM.ArgMax(last), token);
            sequence.Add(token);
        }

        Assert.Equal(6, generated.Length);
    }

    [Fact]
    public void SamplingIsSeededAndTopPRestrictsToTheNucleus()
    {
        var model = TinyModel();
        var a = model.Generate([1, 2], 8, new GenerationOptions(Temperature: 1.5f, TopP: 0.9f, Seed: 7));
        var b = model.Generate([1, 2], 8, new GenerationOptions(Temperature: 1.5f, TopP: 0.9f, Seed: 7));
        Assert.Equal(a, b);

        // With top-p tiny the nucleus is the single most likely token: sampling equals greedy.
        Assert.Equal(model.Generate([1, 2], 8), model.Generate([1, 2], 8, new GenerationOptions(Temperature: 1f, TopP: 1e-6f, Seed: 3)));

        float[] logits = [0f, 3f, 2.9f, -5f];
        var counts = new int[4];
        var sampler = new TokenSampler(new SamplingParams(Temperature: 1f, TopP: 0.8f, Seed: 1));
        for (int i = 0; i < 2000; i++)
        {
            counts[sampler.Next(logits)]++;
        }

        // p ≈ [0.025, 0.50, 0.47, 0.0002]: the top two reach 0.8, so ids 0 and 3 are never drawn.
        Assert.Equal(0, counts[0] + counts[3]);
        Assert.InRange(counts[1], 900, 1200);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraWithZeroBEqualsTheBaseExactly(bool quantized)
    {
        var model = TinyModel();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        int[] tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
        var baseLogits = model.Forward(tokens).Data;
        var baseDecode = model.Forward([4, 2]).Data;
        var wrapped = Lora.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        Assert.Equal(14, wrapped.Count);
        Assert.Equal(baseLogits, model.Forward(tokens).Data);
        Assert.Equal(baseDecode, model.Forward([4, 2]).Data);
        Assert.All(model.NamedParameters(), p => Assert.Equal(p.Name.Contains(".lora_", StringComparison.Ordinal), p.Parameter.Trainable));
    }

    [Fact]
    public void LoraLogitsMatchTheReferenceWithTheAdapter()
    {
        var model = TinyModel();
        Lora.Apply(model, new LoraConfig { R = 3, LoraAlpha = 6, TargetModules = TargetModules.FromList("q_proj", "down_proj"), UseRsLora = true }, seed: 5);
        foreach (var (_, adapter) in Lora.Adapters(model))
        {
            TestUtil.Random(adapter.B.Data.Length, 8, 0.5f).CopyTo(adapter.B.Data, 0);
        }

        int[] tokens = [2, 7, 1, 8, 2, 8];
        var expected = LlamaReference.Logits(model, tokens, withLora: true);
        TestUtil.AssertClose(model.Forward(tokens).Data, expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "LoRA logits");
    }
}
