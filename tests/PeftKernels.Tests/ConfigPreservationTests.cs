// Saved model folders keep the source's config.json: every key (unknown and nested ones
// included) in its order with its value as written (number formatting too), except the keys the
// writer means to change (torch_dtype, or newer transformers' dtype, after a dtype conversion;
// quantization_config once the weights written are plain), and generation_config.json is copied.
// A config built in code is written with the keys transformers writes for a LlamaConfig.
using System.CommandLine;
using System.Text;
using System.Text.Json;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>config.json and generation_config.json through merge, Save, quantize and dequantize.</summary>
public sealed class ConfigPreservationTests : IDisposable
{
    // The tiny test model's shapes, with the keys transformers writes and some it does not know.
    private const string RichConfig = """
        {
          "_name_or_path": "tiny/llama",
          "architectures": [
            "LlamaForCausalLM"
          ],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 1,
          "custom_block": {"nested": [1, 2.50, {"deep": null}], "flag": true, "ünïcode": "é+<"},
          "eos_token_id": [2, 3],
          "head_dim": 16,
          "hidden_act": "silu",
          "hidden_size": 64,
          "initializer_range": 0.02,
          "intermediate_size": 176,
          "max_position_embeddings": 512,
          "mlp_bias": false,
          "model_type": "llama",
          "num_attention_heads": 4,
          "num_hidden_layers": 2,
          "num_key_value_heads": 2,
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 256, "rope_type": "llama3"},
          "rope_theta": 500000.0,
          "tie_word_embeddings": false,
          "torch_dtype": "float32",
          "transformers_version": "4.44.0",
          "use_cache": true,
          "vocab_size": 256
        }
        """;

    private const string GenerationConfig = "{\n  \"bos_token_id\": 1,\n  \"do_sample\": true,\n  \"temperature\": 0.6,\n  \"top_p\": 0.9\n}\n";

    private readonly TempFolder folder = new();

    public ConfigPreservationTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        File.WriteAllText(Path.Combine(ModelFolder, "config.json"), RichConfig);
        File.WriteAllText(Path.Combine(ModelFolder, "generation_config.json"), GenerationConfig);
        AdapterFolder = Path.Combine(folder.Path, "adapter");
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj,v_proj", 2));
        PeftModelTests.Randomize(model, "default", 3);
        peft.SaveAdapter(AdapterFolder);
    }

    private string ModelFolder { get; }

    private string AdapterFolder { get; }

    public void Dispose() => folder.Dispose();

    /// <summary>Each key of a config.json and its value as compact JSON with the source's number tokens, in file order.</summary>
    private static List<(string Key, string Value)> Keys(string configJson)
    {
        using var document = JsonDocument.Parse(configJson);
        return [.. document.RootElement.EnumerateObject().Select(p => (p.Name, Compact(p.Value)))];
    }

    private static string Compact(JsonElement value)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            value.WriteTo(w);
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static string Read(string dir, string file) => File.ReadAllText(Path.Combine(dir, file));

    [Fact]
    public void MergeKeepsEveryKeyOfTheSourceConfigAndCopiesGenerationConfig()
    {
        string output = Path.Combine(folder.Path, "merged");
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(Keys(RichConfig), Keys(Read(output, "config.json")));
        Assert.Contains("\"rms_norm_eps\": 1e-05", Read(output, "config.json"));
        Assert.Contains("\"attention_dropout\": 0.0", Read(output, "config.json"));
        Assert.Equal(GenerationConfig, Read(output, "generation_config.json"));
    }

    [Fact]
    public void AMergeToBf16ChangesTorchDtypeInPlaceAndNothingElse()
    {
        string output = Path.Combine(folder.Path, "bf16");
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--dtype", "bf16", "--out", output);
        Assert.Equal((0, ""), (code, error));
        var expected = Keys(RichConfig).Select(k => k.Key == "torch_dtype" ? (k.Key, "\"bfloat16\"") : k).ToList();
        Assert.Equal(expected, Keys(Read(output, "config.json")));
    }

    [Fact]
    public void NewerDtypeKeyIsRewrittenWhereItStandsAndQuantizationConfigIsDropped()
    {
        string source = RichConfig.Replace("\"torch_dtype\": \"float32\"", "\"dtype\": \"float32\"", StringComparison.Ordinal)
            .Replace("\"use_cache\": true", "\"use_cache\": true,\n  \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}", StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(ModelFolder, "config.json"), source);
        var model = LlamaForCausalLM.Load(ModelFolder).ToStorage(WeightStorage.BFloat16);
        string output = Path.Combine(folder.Path, "saved");
        model.Save(output);
        var expected = Keys(source).Where(k => k.Key != "quantization_config").Select(k => k.Key == "dtype" ? (k.Key, "\"bfloat16\"") : k).ToList();
        Assert.Equal(expected, Keys(Read(output, "config.json")));
        Assert.Equal("bfloat16", LlamaConfig.Load(Path.Combine(output, "config.json")).TorchDtype);
    }

    [Fact]
    public void ANewKeyOfASortedSourceIsInsertedInOrder()
    {
        var config = LlamaConfig.Load(Path.Combine(ModelFolder, "config.json"));
        string path = folder.File("changed.json");
        (config with { MlpBias = true, HeadDim = 8 }).Save(path);
        var keys = Keys(File.ReadAllText(path));
        Assert.Equal(Keys(RichConfig).Select(k => k.Key), keys.Select(k => k.Key));
        Assert.Contains(("mlp_bias", "true"), keys);
        Assert.Contains(("head_dim", "8"), keys);

        // A source without head_dim gets it only when it changes; a sorted source keeps its order.
        string noHeadDim = RichConfig.Replace("\"head_dim\": 16,", "", StringComparison.Ordinal);
        File.WriteAllText(path, noHeadDim);
        LlamaConfig.Load(path).Save(path);
        Assert.Equal(Keys(noHeadDim), Keys(File.ReadAllText(path)));
        (LlamaConfig.Load(path) with { HeadDim = 8 }).Save(path);
        Assert.Equal(Keys(RichConfig).Select(k => k.Key), Keys(File.ReadAllText(path)).Select(k => k.Key));
    }

    [Theory]
    [InlineData("quantize")]
    [InlineData("dequantize")]
    public void QuantizeVerbsCopyConfigAndGenerationConfigByteForByte(string verb)
    {
        string input = ModelFolder, output = Path.Combine(folder.Path, verb);
        if (verb == "dequantize")
        {
            input = Path.Combine(folder.Path, "q4");
            Assert.Equal(0, Invoke("quantize", ModelFolder, input).Code);
        }

        var (code, _, error) = Invoke(verb, input, output);
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(RichConfig, Read(output, "config.json"));
        Assert.Equal(GenerationConfig, Read(output, "generation_config.json"));
    }

    [Fact]
    public void DequantizeDropsQuantizationConfigAndKeepsEveryOtherKey()
    {
        string quantized = Path.Combine(folder.Path, "q4"), output = Path.Combine(folder.Path, "restored");
        Assert.Equal(0, Invoke("quantize", ModelFolder, quantized).Code);
        string source = RichConfig.Replace("\"pretraining_tp\": 1,", "\"pretraining_tp\": 1,\n  \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true},",
            StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(quantized, "config.json"), source);
        var (code, text, error) = Invoke("dequantize", quantized, output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("config.json: dropped quantization_config", text);
        Assert.Equal(Keys(RichConfig), Keys(Read(output, "config.json")));
    }

    [Fact]
    public void AFreshModelWritesTheKeysTransformersWritesSorted()
    {
        string output = Path.Combine(folder.Path, "fresh");
        LlamaForCausalLM.Create(LlamaConfig.Tiny(), seed: 1).Save(output);
        var keys = Keys(Read(output, "config.json"));
        Assert.Equal(keys.Select(k => k.Key).Order(StringComparer.Ordinal), keys.Select(k => k.Key));
        foreach (var (key, value) in new[]
        {
            ("architectures", "[\"LlamaForCausalLM\"]"), ("model_type", "\"llama\""), ("torch_dtype", "\"float32\""), ("attention_dropout", "0.0"),
            ("initializer_range", "0.02"), ("pretraining_tp", "1"), ("use_cache", "true"), ("rope_scaling", "null"), ("tie_word_embeddings", "false"),
            ("rms_norm_eps", "1E-05"), ("rope_theta", "10000.0"), ("head_dim", "16"), ("bos_token_id", "null"),
        })
        {
            Assert.Contains((key, value), keys);
        }

        Assert.Equal(LlamaConfig.Tiny(), LlamaConfig.Load(Path.Combine(output, "config.json")));
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
