using System.Text.Json;
using System.Text.Json.Nodes;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>X-LoRA's folder in PEFT's layout: round trip, strict loading, dispatch through ModelAdapterFolders, two-cache generation.</summary>
public class XLoraFilesTests
{
    private static (XLoraModel XLora, LlamaForCausalLM Model) Saved(string folder, XLoraConfig config)
    {
        var model = XLoraTests.Base();
        var xlora = XLoraModel.Attach(model, config, XLoraTests.SaveExperts(Path.Combine(folder, "experts")), seed: 4);
        XLoraTests.RandomizeClassifier(xlora, 21, 0.4f);
        xlora.Save(Path.Combine(folder, "xlora"));
        return (xlora, model);
    }

    private static string[] Files(string folder) =>
        [.. Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(folder, f)).Order(StringComparer.Ordinal)];

    private static void EditConfig(string folder, Action<JsonObject> edit)
    {
        string path = Path.Combine(folder, Lora.ConfigFile);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
    }

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    public void SaveLoadSaveIsByteIdenticalInPeftLayout(bool layerwise, int depth)
    {
        using var temp = new TempFolder();
        var config = new XLoraConfig { LayerwiseScalings = layerwise, XLoraDepth = depth, XLoraSize = 8, TopKLora = 1, SoftmaxTemperature = 0.5 };
        var (_, model) = Saved(temp.Path, config);
        string first = Path.Combine(temp.Path, "xlora"), second = Path.Combine(temp.Path, "again");
        Assert.Equal(["0/adapter_config.json", "0/adapter_model.safetensors", "1/adapter_config.json", "1/adapter_model.safetensors",
            "adapter_config.json", "adapter_model.safetensors"], Files(first));

        using (var file = SafeTensorsFile.Open(Path.Combine(first, Lora.WeightsFile)))
        {
            var expected = depth == 1
                ? new[] { "base_model.internal_xlora_classifier.layers.0.bias", "base_model.internal_xlora_classifier.layers.0.weight" }
                : ["base_model.internal_xlora_classifier.layers.0.bias", "base_model.internal_xlora_classifier.layers.0.weight",
                    "base_model.internal_xlora_classifier.layers.3.bias", "base_model.internal_xlora_classifier.layers.3.weight"];
            Assert.Equal(expected, file.Names.Order(StringComparer.Ordinal));
            Assert.Equal(layerwise ? 2 * 3 : 2, file.GetInfo(expected[^1]).Shape[0]);
        }

        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(first, Lora.ConfigFile))).RootElement;
        Assert.Equal("XLORA", json.GetProperty("peft_type").GetString());
        Assert.Equal(64, json.GetProperty("hidden_size").GetInt32());
        Assert.Equal("""{"0":"0","1":"1"}""", json.GetProperty("adapters").GetRawText().Replace(" ", string.Empty, StringComparison.Ordinal).Replace("\n", string.Empty, StringComparison.Ordinal));

        using var scope = Tape.NoGrad();
        var expectedLogits = model.Forward(XLoraTests.Tokens).Data;
        var loadedModel = XLoraTests.Base();
        var loaded = (XLoraModel)ModelAdapterFolders.Load(loadedModel, first);
        Assert.Equal("xlora", loaded.Method);
        Assert.All(loaded.Parameters, p => Assert.False(p.Trainable));
        Assert.Equal(config.LayerwiseScalings, loaded.Config.LayerwiseScalings);
        TestUtil.AssertClose(loadedModel.Forward(XLoraTests.Tokens).Data, TestUtil.ToDouble(expectedLogits), 1e-6, 1e-6, "loaded logits");
        loaded.Save(second);
        foreach (string f in Files(first))
        {
            Assert.True(File.ReadAllBytes(Path.Combine(first, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(second, f))), $"{f} differs after save → load → save");
        }

        // The base checkpoint leaves the classifier (and the experts) out.
        string checkpoint = Path.Combine(temp.Path, "base");
        loadedModel.Save(checkpoint);
        using var weights = SafeTensorsFile.Open(Path.Combine(checkpoint, "model.safetensors"));
        Assert.DoesNotContain(weights.Names, n => n.Contains("xlora", StringComparison.Ordinal) || n.Contains("lora_", StringComparison.Ordinal));
    }

    [Fact]
    public void StrictLoadingNamesWhatIsWrongAndLeavesTheModelBare()
    {
        using var temp = new TempFolder();
        Saved(temp.Path, new XLoraConfig { LayerwiseScalings = true });
        string folder = Path.Combine(temp.Path, "xlora");

        string Refused(Action<string> damage)
        {
            string copy = Path.Combine(temp.Path, Guid.NewGuid().ToString("N"));
            foreach (string f in Files(folder))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(copy, f))!);
                File.Copy(Path.Combine(folder, f), Path.Combine(copy, f));
            }

            damage(copy);
            var model = XLoraTests.Base();
            var e = Assert.Throws<InvalidDataException>(() => XLoraModel.Load(model, copy));
            Assert.Null(model.XLora);
            Assert.DoesNotContain(model.NamedModules(), m => m.Module is Nn.ILoraLayer { AllAdapters.Count: > 0 });
            return e.Message;
        }

        Assert.Contains("must be named", Refused(f => EditConfig(f, j => j["adapters"] = new JsonObject { ["a"] = "a", ["b"] = "b" })), StringComparison.Ordinal);
        Assert.Contains("silently inactive", Refused(f => EditConfig(f, j => j["adapters"] = new JsonObject { ["0"] = "0", ["2"] = "2" })), StringComparison.Ordinal);
        Assert.Contains("expert folder", Refused(f => EditConfig(f, j => j["adapters"] = new JsonObject { ["0"] = "0", ["1"] = "1", ["2"] = "2" })), StringComparison.Ordinal);
        Assert.Contains("also holds expert folder \"1\"", Refused(f => EditConfig(f, j => j["adapters"] = new JsonObject { ["0"] = "0" })), StringComparison.Ordinal);
        Assert.Contains("hidden_size is 32", Refused(f => EditConfig(f, j => j["hidden_size"] = 32)), StringComparison.Ordinal);
        string layers = Refused(f => EditConfig(f, j => j["layerwise_scalings"] = false));
        Assert.Contains("layers.0.weight' has shape [6, 64]; expected [2, 64]", layers, StringComparison.Ordinal);
        Assert.Contains("xlora_depth", Refused(f => EditConfig(f, j => j["xlora_depth"] = 0)), StringComparison.Ordinal);
        Assert.Contains("missing tensor", Refused(f => EditConfig(f, j => j["xlora_depth"] = 2)), StringComparison.Ordinal);
        Assert.Contains("peft_type", Refused(f => EditConfig(f, j => j["peft_type"] = "LORA")), StringComparison.Ordinal);

        // A model whose layer count differs: the experts' LoRA tensors do not fit it (the LoRA loader names the missing keys).
        var deeper = Testing.TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 2 }, scale: 5f);
        Assert.Contains("missing key 'base_model.model.model.layers.1.", Assert.Throws<InvalidDataException>(() => XLoraModel.Load(deeper, folder)).Message, StringComparison.Ordinal);
        Assert.Null(deeper.XLora);
        Assert.DoesNotContain(deeper.NamedModules(), m => m.Module is Nn.ILoraLayer { AllAdapters.Count: > 0 });
        var wider = Testing.TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1, HiddenSize = 32, NumAttentionHeads = 2, NumKeyValueHeads = 1 });
        Assert.Contains("model's hidden size is 32", Assert.Throws<InvalidDataException>(() => XLoraModel.Load(wider, folder)).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false, 0)]
    [InlineData(true, 1)]
    public void GenerationWithTwoCachesEqualsTheFullTwoPassForward(bool layerwise, int topK)
    {
        using var temp = new TempFolder();
        var (xlora, model) = Saved(temp.Path, new XLoraConfig { LayerwiseScalings = layerwise, TopKLora = topK == 0 ? null : topK });
        using var scope = Tape.NoGrad();
        int vocab = model.Config.VocabSize;
        var full = model.Forward(XLoraTests.Tokens).Data;
        var fullScalings = xlora.LatestScalings!.Data;

        using var cache = model.CreateCache(XLoraTests.Tokens.Length);
        var stepped = new List<float>(model.Forward(XLoraTests.Tokens[..3], 1, cache).Data);
        var steppedScalings = new List<float>(xlora.LatestScalings!.Data);
        foreach (int token in XLoraTests.Tokens[3..])
        {
            stepped.AddRange(model.Forward([token], 1, cache).Data);
            steppedScalings.AddRange(xlora.LatestScalings!.Data);
        }

        TestUtil.AssertClose([.. steppedScalings], TestUtil.ToDouble(fullScalings), 1e-5, 1e-5, "scalings");
        TestUtil.AssertClose([.. stepped], TestUtil.ToDouble(full), 1e-4, 1e-4, "logits");

        // Generate (greedy, its own cache) equals re-running the full two-pass forward for every new token.
        int[] prompt = [1, 7, 3];
        var generated = model.Generate(prompt, 6);
        var sequence = new List<int>(prompt);
        foreach (int token in generated)
        {
            var logits = model.Forward([.. sequence]).Data;
            Assert.Equal(LlamaForCausalLM.ArgMax(logits.AsSpan(logits.Length - vocab)), token);
            sequence.Add(token);
        }

        // A cache filled without X-LoRA cannot continue through it.
        using var plain = model.CreateCache(8);
        xlora.Detach();
        model.Forward([1, 2], 1, plain);
        var again = XLoraModel.Load(model, Path.Combine(temp.Path, "xlora"));
        Assert.Contains("scaling pass", Assert.Throws<InvalidOperationException>(() => model.Forward([3], 1, plain)).Message, StringComparison.Ordinal);
        Assert.NotNull(again);
    }
}
