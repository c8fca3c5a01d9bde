using System.Text.Json;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>PEFT's prompt-learning folders: save → load → save byte-identical, the folded encoders, strict loading, dispatch.</summary>
public class PromptLearningFilesTests
{
    public static TheoryData<string, bool> Methods() => new()
    {
        { PromptLearningConfig.PromptTuningType, false },
        { PromptLearningConfig.PTuningType, false },
        { PromptLearningConfig.PrefixTuningType, false },
        { PromptLearningConfig.PrefixTuningType, true },
    };

    private static PromptLearningAdapter Trained(LlamaForCausalLM model, string type, bool projection) =>
        PromptLearningAdapter.Attach(model, new PromptLearningConfig(type) { NumVirtualTokens = 3, PrefixProjection = projection, EncoderHiddenSize = type == PromptLearningConfig.PromptTuningType ? null : 5 }, 11);

    [Theory]
    [MemberData(nameof(Methods))]
    public void SaveLoadSaveIsByteIdenticalAndTheEncoderIsFolded(string type, bool projection)
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(PromptLearningTests.Gqa, 2);
        var adapter = Trained(model, type, projection);
        var logits = PromptLearningTests.Logits(model, PromptLearningTests.Tokens, 2);
        adapter.Save(temp.File("a"));
        adapter.Detach();

        var loaded = (PromptLearningAdapter)ModelAdapterFolders.Load(model, temp.File("a"));
        Assert.Equal(type, loaded.Config.Type);
        Assert.Single(loaded.Parameters);
        TestUtil.AssertClose(PromptLearningTests.Logits(model, PromptLearningTests.Tokens, 2), logits, 1e-5, 1e-5, "logits after load");
        loaded.Save(temp.File("b"));
        foreach (string file in new[] { Lora.ConfigFile, Lora.WeightsFile })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(temp.File("a"), file)), File.ReadAllBytes(Path.Combine(temp.File("b"), file)));
        }

        using var weights = IO.SafeTensorsFile.Open(Path.Combine(temp.File("a"), Lora.WeightsFile));
        Assert.Equal([PromptLearningAdapter.TensorName], weights.Names);
        int kvDim = PromptLearningTests.Gqa.NumKeyValueHeads * PromptLearningTests.Gqa.HeadDim;
        long width = type == PromptLearningConfig.PrefixTuningType ? 2 * PromptLearningTests.Gqa.NumHiddenLayers * kvDim : PromptLearningTests.Gqa.HiddenSize;
        Assert.Equal([3L, width], weights.GetInfo(PromptLearningAdapter.TensorName).Shape);
    }

    [Fact]
    public void TheConfigHasPeftsFieldsFilledFromTheModel()
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(PromptLearningTests.Gqa, 2);
        Trained(model, PromptLearningConfig.PrefixTuningType, true).Save(temp.Path);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(temp.File(Lora.ConfigFile)));
        var root = doc.RootElement;
        Assert.Equal("PREFIX_TUNING", root.GetProperty("peft_type").GetString());
        Assert.Equal(3, root.GetProperty("num_virtual_tokens").GetInt32());
        Assert.Equal(16, root.GetProperty("token_dim").GetInt32());
        Assert.Equal(2, root.GetProperty("num_attention_heads").GetInt32());
        Assert.Equal(2, root.GetProperty("num_layers").GetInt32());
        Assert.Equal(1, root.GetProperty("num_transformer_submodules").GetInt32());
        Assert.True(root.GetProperty("prefix_projection").GetBoolean());
        Assert.Equal(5, root.GetProperty("encoder_hidden_size").GetInt32());
        string[] keys = [.. root.EnumerateObject().Select(p => p.Name)];
        Assert.Equal(keys.Order(StringComparer.Ordinal), keys);
    }

    [Theory]
    [InlineData("num_layers", 3, "\"num_layers\" is 3; this model needs 2")]
    [InlineData("token_dim", 32, "\"token_dim\" is 32; this model needs 16 (the model's num_key_value_heads × head_dim)")]
    [InlineData("num_attention_heads", 4, "\"num_attention_heads\" is 4; this model needs 2")]
    [InlineData("num_transformer_submodules", 2, "num_transformer_submodules is 2")]
    public void AConfigForAnotherModelIsRefusedNamingTheField(string field, int value, string message)
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(PromptLearningTests.Gqa, 2);
        Trained(model, PromptLearningConfig.PrefixTuningType, false).Save(temp.Path);
        string path = temp.File(Lora.ConfigFile);
        File.WriteAllText(path, File.ReadAllText(path).Replace($"\"{field}\": ", $"\"{field}\": {value}, \"old_{field}\": ", StringComparison.Ordinal));
        var fresh = LlamaForCausalLM.Create(PromptLearningTests.Gqa, 2);
        var e = Assert.Throws<InvalidDataException>(() => ModelAdapterFolders.Load(fresh, temp.Path));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.Contains(Lora.ConfigFile, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BadTensorsAreRefusedNamingTheTensor()
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 2);
        PromptLearningTests.WriteFolder(temp.Path, model, PromptLearningConfig.PromptTuningType, 3, new float[3 * 32], [3, 32]);
        Assert.Contains("has shape [3, 32]; expected [3, 64]", Assert.Throws<InvalidDataException>(() => PromptLearningAdapter.Load(model, temp.Path)).Message, StringComparison.Ordinal);

        IO.SafeTensorsWriter.Write(temp.File(Lora.WeightsFile),
            [IO.SafeTensor.FromFloat32("prompt_embeddings", new float[3 * 64], 3, 64), IO.SafeTensor.FromFloat32("extra", new float[2], 2)]);
        Assert.Contains("exactly one tensor, 'prompt_embeddings'; found 2", Assert.Throws<InvalidDataException>(() => PromptLearningAdapter.Load(model, temp.Path)).Message, StringComparison.Ordinal);

        IO.SafeTensorsWriter.Write(temp.File(Lora.WeightsFile), [IO.SafeTensor.FromFloat32("prompt_embedding", new float[3 * 64], 3, 64)]);
        Assert.Contains("found 1: 'prompt_embedding'", Assert.Throws<InvalidDataException>(() => PromptLearningAdapter.Load(model, temp.Path)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PeftModelRefusesAPromptLearningFolderPointingToModelAdapterFolders()
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 2);
        PromptLearningAdapter.Attach(model, new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 2 }).Save(temp.Path);
        Assert.True(ModelAdapterFolders.Recognizes(temp.Path));
        var peft = new PeftModel(LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 2));
        Assert.Contains("ModelAdapterFolders.Load", Assert.Throws<InvalidDataException>(() => peft.LoadAdapter(temp.Path)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AnLstmTrainedPTuningFolderLoadsItsFoldedTable()
    {
        using var temp = new TempFolder();
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 2);
        PromptLearningTests.WriteFolder(temp.Path, model, PromptLearningConfig.PTuningType, 2, TestUtil.Random(2 * 64, 4), [2, 64]);
        string path = temp.File(Lora.ConfigFile);
        File.WriteAllText(path, File.ReadAllText(path).Replace("\"MLP\"", "\"LSTM\"", StringComparison.Ordinal));
        var adapter = PromptLearningAdapter.Load(model, temp.Path);
        Assert.Equal("LSTM", adapter.Config.EncoderReparameterizationType);
        Assert.Equal("p-tuning", adapter.Method);
    }
}
