using System.Text.Json.Nodes;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// MixLoRA folders: the reference's key names and config fields, save → load → save byte-identical with equal outputs, dispatch
/// through ModelAdapterFolders, and strict loading (expert count, layer count, shapes, config fields, the pickle-only folder).
/// </summary>
public sealed class MixLoraFilesTests : IDisposable
{
    private readonly string root = Path.Combine(Path.GetTempPath(), "mixlora-files-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(root))
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public void SaveLoadSaveIsByteIdenticalAndLoadsTheSameModel()
    {
        var (model, adapter) = MixLoraModelTests.Randomized(MixLoraModelTests.Config with { JitterNoise = 0.01, UseRsLora = true });
        string first = Path.Combine(root, "a"), second = Path.Combine(root, "b");
        adapter.Save(first);

        var copy = TinyLlama.Model();
        var loaded = Assert.IsType<MixLoraAdapter>(ModelAdapterFolders.Load(copy, first));
        Assert.True(ModelAdapterFolders.Recognizes(first));
        Assert.Equal("mixlora", loaded.Method);
        Assert.All(loaded.Parameters, p => Assert.False(p.Trainable));
        loaded.Save(second);
        foreach (var file in new[] { MixLoraConfig.ConfigFile, MixLoraAdapter.WeightsFile })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(first, file)), File.ReadAllBytes(Path.Combine(second, file)));
        }

        using (Tape.NoGrad())
        {
            TestUtil.AssertClose(copy.Forward(TinyLlama.Inputs).Data, model.Forward(TinyLlama.Inputs).Data, 1e-6, 1e-6, "loaded logits");
        }

        // The reference's layout: its key names, peft_type and routing strategy, floats written as floats.
        using var weights = SafeTensorsFile.Open(Path.Combine(first, MixLoraAdapter.WeightsFile));
        Assert.Contains("mixlora.layers.1.mlp.moe_gate.weight", weights.Names);
        Assert.Contains("mixlora.layers.0.mlp.gate_proj.experts.3.lora_A.weight", weights.Names);
        Assert.Contains("mixlora.layers.0.self_attn.v_proj.lora_B.weight", weights.Names);
        Assert.Equal([4L, 64L], weights.GetInfo("mixlora.layers.1.mlp.moe_gate.weight").Shape);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(first, MixLoraConfig.ConfigFile)))!;
        Assert.Equal("MIXLORA", (string?)json["peft_type"]);
        Assert.Equal("mixlora", (string?)json["routing_strategy"]);
        Assert.Equal(4, (int)json["num_experts"]!);
        Assert.Contains("\"lora_dropout\": 0.0", File.ReadAllText(Path.Combine(first, MixLoraConfig.ConfigFile)), StringComparison.Ordinal);
    }

    [Fact]
    public void WrongExpertCountIsNamed()
    {
        string folder = Saved();
        EditConfig(folder, j => j["num_experts"] = 3);
        var e = Assert.Throws<InvalidDataException>(() => MixLoraAdapter.Load(TinyLlama.Model(), folder));
        Assert.Contains("the file has 4 experts (0..3); num_experts is 3", e.Message, StringComparison.Ordinal);
        Assert.Contains("unexpected key 'mixlora.layers.0.mlp.down_proj.experts.3.lora_A.weight'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WrongLayerCountAndShapesAreNamed()
    {
        string folder = Saved();
        var oneLayer = Assert.Throws<InvalidDataException>(() => MixLoraAdapter.Load(TinyLlama.OneLayer(), folder));
        Assert.Contains("the file has weights for 2 layers (0..1); the model has 1", oneLayer.Message, StringComparison.Ordinal);

        var wide = TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, IntermediateSize = 96 });
        var shapes = Assert.Throws<InvalidDataException>(() => MixLoraAdapter.Load(wide, folder));
        Assert.Contains("'mixlora.layers.0.mlp.gate_proj.experts.0.lora_B.weight': expected shape [96, 4], found [176, 4]", shapes.Message, StringComparison.Ordinal);

        EditConfig(folder, j => j["r"] = 8);
        var rank = Assert.Throws<InvalidDataException>(() => MixLoraAdapter.Load(TinyLlama.Model(), folder));
        Assert.Contains("expected shape [8, 64], found [4, 64]", rank.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("routing_strategy", "\"mixtral\"", "legacy layout")]
    [InlineData("routing_strategy", "\"mixlora-switch\"", "only \"mixlora\"")]
    [InlineData("use_dora", "true", "DoRA experts")]
    [InlineData("act_fn", "\"gelu\"", "act_fn \"gelu\"")]
    [InlineData("top_k", "5", "top_k must be in [1, num_experts = 4]")]
    [InlineData("target_modules", "[\"q_proj\", \"mlp\"]", "'mlp'")]
    [InlineData("num_experts", "\"four\"", "\"num_experts\" must be a number")]
    public void BadConfigFieldsAreNamed(string field, string value, string message)
    {
        string folder = Saved();
        EditConfig(folder, j => j[field] = JsonNode.Parse(value));
        var e = Assert.Throws<InvalidDataException>(() => MixLoraAdapter.Load(TinyLlama.Model(), folder));
        Assert.Contains(MixLoraConfig.ConfigFile, e.Message, StringComparison.Ordinal);
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void APickleOnlyFolderIsRefusedClearly()
    {
        string folder = Saved();
        File.Move(Path.Combine(folder, MixLoraAdapter.WeightsFile), Path.Combine(folder, "adapter_model.bin"));
        var e = Assert.Throws<FileNotFoundException>(() => MixLoraAdapter.Load(TinyLlama.Model(), folder));
        Assert.Contains("adapter_model.bin (a PyTorch pickle", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TheEngineLoadsAMixLoraFolderWithTheStrictLoader()
    {
        string folder = Saved();
        var registry = new PeftKernels.Engine.AdapterRegistry(TinyLlama.Model());
        Assert.Equal(PeftKernels.Engine.AdapterKind.MixLora, registry.Load("mix", folder).Kind);

        string bad = Saved();
        EditConfig(bad, j => j["num_experts"] = 3);
        var e = Assert.Throws<InvalidDataException>(() => registry.Load("bad", bad));
        Assert.Contains("the file has 4 experts (0..3); num_experts is 3", e.Message, StringComparison.Ordinal);
        Assert.Equal(["mix"], registry.Snapshot().Select(s => s.Name));
    }

    private string Saved()
    {
        var (_, adapter) = MixLoraModelTests.Randomized();
        string folder = Path.Combine(root, Guid.NewGuid().ToString("N"));
        adapter.Save(folder);
        return folder;
    }

    private static void EditConfig(string folder, Action<JsonObject> edit)
    {
        string path = Path.Combine(folder, MixLoraConfig.ConfigFile);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
    }
}
