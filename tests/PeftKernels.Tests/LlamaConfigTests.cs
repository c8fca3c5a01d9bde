// LlamaConfig against real Hugging Face config.json files (Llama 3.2 1B Instruct, Qwen2.5 0.5B),
// a minimal file that exercises every default, save/load round trips, and one test per
// validation rule asserting the message names the key, the value and the file.
using System.Text.Json;
using System.Text.Json.Nodes;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class LlamaConfigTests : IDisposable
{
    // meta-llama/Llama-3.2-1B-Instruct/config.json, verbatim.
    private const string Llama32 = """
        {
          "architectures": ["LlamaForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 128000,
          "eos_token_id": [128001, 128008, 128009],
          "head_dim": 64,
          "hidden_act": "silu",
          "hidden_size": 2048,
          "initializer_range": 0.02,
          "intermediate_size": 8192,
          "max_position_embeddings": 131072,
          "mlp_bias": false,
          "model_type": "llama",
          "num_attention_heads": 32,
          "num_hidden_layers": 16,
          "num_key_value_heads": 8,
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3"
          },
          "rope_theta": 500000.0,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.45.0.dev0",
          "use_cache": true,
          "vocab_size": 128256
        }
        """;

    // Qwen/Qwen2.5-0.5B/config.json, verbatim: no attention_bias key, yet q/k/v have biases.
    private const string Qwen25 = """
        {
          "architectures": ["Qwen2ForCausalLM"],
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151643,
          "hidden_act": "silu",
          "hidden_size": 896,
          "initializer_range": 0.02,
          "intermediate_size": 4864,
          "max_position_embeddings": 32768,
          "max_window_layers": 24,
          "model_type": "qwen2",
          "num_attention_heads": 14,
          "num_hidden_layers": 24,
          "num_key_value_heads": 2,
          "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0,
          "sliding_window": 32768,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.40.1",
          "use_cache": true,
          "use_sliding_window": false,
          "vocab_size": 151936
        }
        """;

    private const string Minimal = """
        {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        """;

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void LoadsLlama32WithLlama3RopeScalingAndEosList()
    {
        var c = Load(Llama32);

        Assert.Equal((128256, 2048, 8192, 16, 32, 8, 64), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));
        Assert.Equal((1e-5, 500000.0, 131072, true), (c.RmsNormEps, c.RopeTheta, c.MaxPositionEmbeddings, c.TieWordEmbeddings));
        Assert.Equal(("silu", false, false, "bfloat16", "llama"), (c.HiddenAct, c.AttentionBias, c.MlpBias, c.TorchDtype, c.ModelType));
        Assert.Equal(128000, c.BosTokenId);
        Assert.Equal([128001, 128008, 128009], c.EosTokenId!);
        Assert.Equal(["LlamaForCausalLM"], c.Architectures);
        Assert.Equal(new RopeScaling { RopeType = "llama3", Factor = 32, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 }, c.RopeScaling);
        // Published size of Llama 3.2 1B (tied embeddings): 1,235,814,400 parameters.
        Assert.Equal(1_235_814_400, c.ParameterCount());
    }

    [Fact]
    public void LoadsQwen25WithQkvBiasesButNoOutputBias()
    {
        var c = Load(Qwen25);

        Assert.Equal(("qwen2", true, false), (c.ModelType, c.AttentionBias, c.AttentionOutputBias));
        Assert.Equal((14, 2, 64), (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));
        Assert.Equal([151643], c.EosTokenId!);
        Assert.Equal(["Qwen2ForCausalLM"], c.Architectures);
        Assert.Null(c.RopeScaling);
        // Published size of Qwen2.5-0.5B: 494,032,768 parameters (q/k/v biases, tied embeddings).
        Assert.Equal(494_032_768, c.ParameterCount());
    }

    [Fact]
    public void ExplicitAttentionBiasOverridesTheQwen2Default()
    {
        var c = Load(Edit(Qwen25, o => o["attention_bias"] = false));

        Assert.False(c.AttentionBias);
    }

    [Fact]
    public void MinimalConfigGetsTheDocumentedDefaults()
    {
        var c = Load(Minimal);

        var expected = new LlamaConfig
        {
            VocabSize = 1000,
            HiddenSize = 64,
            IntermediateSize = 128,
            NumHiddenLayers = 2,
            NumAttentionHeads = 4,
            NumKeyValueHeads = 4,
            HeadDim = 16,
            RmsNormEps = 1e-6,
            RopeTheta = 10000,
            MaxPositionEmbeddings = 2048,
        };
        Assert.Equal(expected, c);
        Assert.Equal(("silu", "llama", false, false, false), (c.HiddenAct, c.ModelType, c.TieWordEmbeddings, c.AttentionBias, c.MlpBias));
        Assert.Null(c.TorchDtype);
        Assert.Null(c.BosTokenId);
        Assert.Null(c.EosTokenId);
        Assert.Equal(["LlamaForCausalLM"], c.Architectures);
    }

    [Fact]
    public void NullHeadDimAndKvHeadsMeanTheDefaultsAndNewerDtypeKeyIsRead()
    {
        var c = Load(Edit(Minimal, o =>
        {
            o["head_dim"] = null;
            o["num_key_value_heads"] = null;
            o["dtype"] = "float16";
            o["model_type"] = "mistral";
            o["sliding_window"] = 4096;
        }));

        Assert.Equal((16, 4, "float16", "mistral"), (c.HeadDim, c.NumKeyValueHeads, c.TorchDtype, c.ModelType));
        Assert.Equal(["MistralForCausalLM"], c.Architectures);
    }

    [Theory]
    [InlineData("""{"rope_type": "linear", "factor": 2.0}""", "linear", 2.0)]
    [InlineData("""{"type": "linear", "factor": 4}""", "linear", 4.0)]
    public void LinearRopeScalingIsKeptWithItsFactor(string scaling, string type, double factor)
    {
        var c = Load(Edit(Minimal, o => o["rope_scaling"] = JsonNode.Parse(scaling)));

        Assert.Equal(new RopeScaling { RopeType = type, Factor = factor }, c.RopeScaling);
    }

    [Fact]
    public void DefaultRopeScalingMeansNone()
    {
        var c = Load(Edit(Minimal, o => o["rope_scaling"] = JsonNode.Parse("""{"rope_type": "default"}""")));

        Assert.Null(c.RopeScaling);
    }

    public static TheoryData<string> RoundTripSources() => new() { Llama32, Qwen25, Minimal };

    [Theory]
    [MemberData(nameof(RoundTripSources))]
    public void SaveThenLoadGivesAnEqualConfig(string json)
    {
        var c = Load(json);
        string path = folder.File("saved.json");

        c.Save(path);
        var back = LlamaConfig.Load(path);

        Assert.Equal(c, back);
        Assert.Equal(c.GetHashCode(), back.GetHashCode());
        Assert.Equal(["config.json", "saved.json"], folder.Entries());
    }

    [Fact]
    public void PresetsRoundTripAndSaveHfStyleKeys()
    {
        foreach (var c in new[] { LlamaConfig.Tiny(), LlamaConfig.Small(300), LlamaConfig.Llama125M(), LlamaConfig.Tiny() with { RopeScaling = new RopeScaling { RopeType = "linear", Factor = 2 } } })
        {
            string path = folder.File("preset.json");
            c.Save(path);
            Assert.Equal(c, LlamaConfig.Load(path));
        }

        (LlamaConfig.Tiny() with { EosTokenId = [1, 2] }).Save(folder.File("tiny.json"));
        string text = File.ReadAllText(folder.File("tiny.json"));
        var saved = JsonNode.Parse(text)!.AsObject();
        Assert.Equal(16, (int)saved["head_dim"]!);
        Assert.Equal("llama", (string)saved["model_type"]!);
        Assert.Equal("LlamaForCausalLM", (string)saved["architectures"]![0]!);
        Assert.Equal("[1,2]", saved["eos_token_id"]!.ToJsonString());
        Assert.Contains("\"rope_theta\": 10000.0", text);
        Assert.Contains("\"rms_norm_eps\": 1E-05", text);
    }

    [Fact]
    public void PresetsHaveTheStatedShapes()
    {
        var tiny = LlamaConfig.Tiny(300);
        var small = LlamaConfig.Small();
        var m125 = LlamaConfig.Llama125M();

        Assert.Equal((300, 64, 176, 2, 4, 2, 16, 512), (tiny.VocabSize, tiny.HiddenSize, tiny.IntermediateSize, tiny.NumHiddenLayers, tiny.NumAttentionHeads, tiny.NumKeyValueHeads, tiny.HeadDim, tiny.MaxPositionEmbeddings));
        Assert.Equal((256, 128, 352, 4, 4, 2, 32, 1024), (small.VocabSize, small.HiddenSize, small.IntermediateSize, small.NumHiddenLayers, small.NumAttentionHeads, small.NumKeyValueHeads, small.HeadDim, small.MaxPositionEmbeddings));
        Assert.Equal((32000, 768, 2048, 12, 12, 12, 64, 2048), (m125.VocabSize, m125.HiddenSize, m125.IntermediateSize, m125.NumHiddenLayers, m125.NumAttentionHeads, m125.NumKeyValueHeads, m125.HeadDim, m125.MaxPositionEmbeddings));
        Assert.Equal((1e-5, 10000.0, false), (m125.RmsNormEps, m125.RopeTheta, m125.TieWordEmbeddings));
        // embed + lm_head 2·256·64, per layer q,o 64·64 each, k,v 64·32 each, mlp 3·64·176, norms 2·64; final norm 64.
        Assert.Equal((2 * 256 * 64) + (2 * ((2 * 64 * 64) + (2 * 64 * 32) + (3 * 64 * 176) + (2 * 64))) + 64, LlamaConfig.Tiny().ParameterCount());
    }

    [Fact]
    public void ParameterCountAddsConfiguredBiasesAndDropsTiedHead()
    {
        var plain = LlamaConfig.Tiny();
        int q = 4 * 16, kv = 2 * 16;

        Assert.Equal(plain.ParameterCount() + (2 * (q + (2 * kv) + 64)), (plain with { AttentionBias = true }).ParameterCount());
        Assert.Equal(plain.ParameterCount() + (2 * (q + (2 * kv))), (plain with { AttentionBias = true, ModelType = "qwen2" }).ParameterCount());
        Assert.Equal(plain.ParameterCount() + (2 * ((2 * 176) + 64)), (plain with { MlpBias = true }).ParameterCount());
        Assert.Equal(plain.ParameterCount() - (256 * 64), (plain with { TieWordEmbeddings = true }).ParameterCount());
    }

    [Fact]
    public void EqualityComparesArraysByValue()
    {
        var a = LlamaConfig.Tiny() with { EosTokenId = [1, 2], Architectures = ["LlamaForCausalLM"] };
        var b = LlamaConfig.Tiny() with { EosTokenId = [1, 2], Architectures = ["LlamaForCausalLM"] };

        Assert.Equal(a, b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
        Assert.NotEqual(a, b with { EosTokenId = [1] });
        Assert.NotEqual(a, b with { EosTokenId = null });
        Assert.NotEqual(a, b with { Architectures = ["MistralForCausalLM"] });
        Assert.NotEqual(a, b with { RopeTheta = 10001 });
    }

    public static TheoryData<string, string, string> InvalidEdits() => new()
    {
        { """{"vocab_size": 0}""", "vocab_size = 0", "positive" },
        { """{"intermediate_size": -5}""", "intermediate_size = -5", "positive" },
        { """{"num_hidden_layers": 0}""", "num_hidden_layers = 0", "positive" },
        { """{"max_position_embeddings": 0}""", "max_position_embeddings = 0", "positive" },
        { """{"num_key_value_heads": 3}""", "num_attention_heads = 4", "num_key_value_heads = 3" },
        { """{"head_dim": 15}""", "head_dim = 15", "even" },
        { """{"head_dim": 0}""", "head_dim = 0", "positive" },
        { """{"num_attention_heads": 3}""", "hidden_size = 64", "num_attention_heads = 3" },
        { """{"rms_norm_eps": 0}""", "rms_norm_eps = 0", "positive" },
        { """{"rope_theta": -1}""", "rope_theta = -1", "positive" },
        { """{"bos_token_id": 1000}""", "bos_token_id = 1000", "[0, 1000)" },
        { """{"eos_token_id": [2, -1]}""", "eos_token_id -1", "[0, 1000)" },
        { """{"hidden_size": "big"}""", "\"hidden_size\"", "an integer" },
        { """{"vocab_size": 1000.5}""", "\"vocab_size\"", "1000.5" },
        { """{"eos_token_id": "x"}""", "\"eos_token_id\"", "an integer or a list of integers" },
        { """{"tie_word_embeddings": 1}""", "\"tie_word_embeddings\"", "true or false" },
        { """{"architectures": "LlamaForCausalLM"}""", "\"architectures\"", "a list of strings" },
        { """{"rope_scaling": {"rope_type": "linear"}}""", "\"rope_scaling.factor\"", "missing" },
        { """{"rope_scaling": {"rope_type": "linear", "factor": 0}}""", "rope_scaling.factor = 0", "positive" },
        { """{"rope_scaling": {"factor": 2}}""", "rope_scaling", "rope_type" },
        { """{"rope_scaling": {"rope_type": "llama3", "factor": 8, "high_freq_factor": 4, "original_max_position_embeddings": 8192}}""", "rope_scaling.low_freq_factor = missing", "positive" },
        { """{"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4, "original_max_position_embeddings": 8192}}""", "rope_scaling.high_freq_factor = 4", "above low_freq_factor = 4" },
        { """{"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}}""", "rope_scaling.original_max_position_embeddings = missing", "positive" },
    };

    [Theory]
    [MemberData(nameof(InvalidEdits))]
    public void InvalidValueNamesTheKeyTheValueAndTheFile(string edit, string names, string detail)
    {
        string path = Write(Edit(Minimal, o => Merge(o, edit)));

        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.Load(path));

        Assert.Contains(path, e.Message);
        Assert.Contains(names, e.Message);
        Assert.Contains(detail, e.Message);
    }

    [Theory]
    [InlineData("vocab_size")]
    [InlineData("hidden_size")]
    [InlineData("intermediate_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    public void MissingRequiredKeyIsNamed(string key)
    {
        string path = Write(Edit(Minimal, o => o.Remove(key)));

        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.Load(path));

        Assert.Equal($"{path}: \"{key}\" is missing.", e.Message);
    }

    [Theory]
    [InlineData("""{"hidden_act": "gelu"}""", "hidden_act = \"gelu\"")]
    [InlineData("""{"model_type": "gpt2"}""", "model_type = \"gpt2\"")]
    [InlineData("""{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}""", "rope_scaling.rope_type = \"yarn\"")]
    [InlineData("""{"rope_scaling": {"type": "dynamic", "factor": 2.0}}""", "rope_scaling.rope_type = \"dynamic\"")]
    public void UnsupportedFeatureIsNamed(string edit, string names)
    {
        string path = Write(Edit(Minimal, o => Merge(o, edit)));

        var e = Assert.Throws<NotSupportedException>(() => LlamaConfig.Load(path));

        Assert.Contains(path, e.Message);
        Assert.Contains(names, e.Message);
    }

    [Fact]
    public void NotJsonOrNotAnObjectIsRejected()
    {
        string notJson = Write("{\"vocab_size\": ");
        Assert.Contains("not valid JSON", Assert.Throws<InvalidDataException>(() => LlamaConfig.Load(notJson)).Message);

        string array = Write("[1, 2]");
        Assert.Contains("expected a JSON object", Assert.Throws<InvalidDataException>(() => LlamaConfig.Load(array)).Message);
    }

    [Fact]
    public void SavingAnInvalidConfigThrowsAndWritesNothing()
    {
        var bad = LlamaConfig.Tiny() with { NumKeyValueHeads = 3 };

        var e = Assert.Throws<InvalidOperationException>(() => bad.Save(folder.File("bad.json")));

        Assert.Contains("num_key_value_heads = 3", e.Message);
        Assert.Empty(folder.Entries());
        Assert.Contains("head_dim = 7", Assert.Throws<InvalidOperationException>(() => (LlamaConfig.Tiny() with { HeadDim = 7 }).Validate()).Message);
        Assert.Contains("\"relu\"", Assert.Throws<NotSupportedException>(() => (LlamaConfig.Tiny() with { HiddenAct = "relu" }).Validate()).Message);
    }

    private LlamaConfig Load(string json) => LlamaConfig.Load(Write(json));

    private string Write(string json)
    {
        string path = folder.File("config.json");
        File.WriteAllText(path, json);
        return path;
    }

    private static string Edit(string json, Action<JsonObject> edit)
    {
        var obj = JsonNode.Parse(json)!.AsObject();
        edit(obj);
        return obj.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static void Merge(JsonObject target, string edit)
    {
        foreach (var (key, value) in JsonNode.Parse(edit)!.AsObject())
        {
            target[key] = value?.DeepClone();
        }
    }
}
