using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// AdapterHub's files: adapter_config.json + adapter.safetensors (key names), a composition's adapter_setup.json with adapter and
/// fusion sub-folders, save → load → save byte-identical, and strict loading (hidden size, layer count, names, tensors).
/// </summary>
public class BottleneckFilesTests
{
    private static string[] Bytes(string folder) =>
        [.. Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => Path.GetRelativePath(folder, f) + ":" + Convert.ToHexString(File.ReadAllBytes(f)))];

    private static BottleneckAdapters Trained(LlamaForCausalLM model, BottleneckConfig config)
    {
        var set = BottleneckAdapters.Attach(model, config, seed: 7, name: "sentiment");
        BottleneckAdapterTests.Randomize(set, 80);
        return set;
    }

    [Theory]
    [InlineData("houlsby", BottleneckScalingKind.Constant)]
    [InlineData("pfeiffer", BottleneckScalingKind.Learned)]
    [InlineData("parallel", BottleneckScalingKind.Channel)]
    public void OneAdapterRoundTripsByteIdentically(string preset, BottleneckScalingKind scaling)
    {
        var model = TinyLlama.Model();
        var set = Trained(model, BottleneckConfig.Preset(preset) with { ScalingKind = scaling, LeaveOut = [1] });
        using var first = new TempFolder();
        using var second = new TempFolder();
        set.Save(first.Path);
        Assert.True(ModelAdapterFolders.Recognizes(first.Path));

        var other = TinyLlama.Model();
        var loaded = (BottleneckAdapters)ModelAdapterFolders.Load(other, first.Path);
        Assert.Equal(set.ConfigOf("sentiment"), loaded.ConfigOf("sentiment"));
        Assert.All(loaded.Parameters, p => Assert.False(p.Trainable));
        loaded.Save(second.Path);
        Assert.Equal(Bytes(first.Path), Bytes(second.Path));

        using var scope = Tape.NoGrad();
        Assert.Equal(model.Forward(TinyLlama.Inputs).Data, other.Forward(TinyLlama.Inputs).Data);
    }

    [Fact]
    public void TheFilesUseAdapterHubsKeysAndConfigFields()
    {
        var model = TinyLlama.Model();
        Trained(model, BottleneckConfig.Houlsby()).Save(TempPath(out var folder));
        using (folder)
        {
            using var file = SafeTensorsFile.Open(folder.File("adapter.safetensors"));
            Assert.Equal(
                [
                    "model.layers.0.attention_adapters.adapters.sentiment.adapter_down.0.bias",
                    "model.layers.0.attention_adapters.adapters.sentiment.adapter_down.0.weight",
                    "model.layers.0.attention_adapters.adapters.sentiment.adapter_up.bias",
                    "model.layers.0.attention_adapters.adapters.sentiment.adapter_up.weight",
                ],
                file.Names.Take(4));
            Assert.Equal(16, file.Names.Count);
            Assert.Equal([4L, 64L], file.GetInfo("model.layers.1.output_adapters.adapters.sentiment.adapter_down.0.weight").Shape);
            using var json = JsonDocument.Parse(File.ReadAllBytes(folder.File("adapter_config.json")));
            var root = json.RootElement;
            Assert.Equal(["config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"], root.EnumerateObject().Select(p => p.Name));
            var config = root.GetProperty("config");
            Assert.True(config.GetProperty("mh_adapter").GetBoolean());
            Assert.Equal("swish", config.GetProperty("non_linearity").GetString());
            Assert.Equal(16, config.GetProperty("reduction_factor").GetInt32());
            Assert.Equal("bert", config.GetProperty("init_weights").GetString());
            Assert.Equal(1.0, config.GetProperty("scaling").GetDouble());
            Assert.Equal(64, root.GetProperty("hidden_size").GetInt32());
            Assert.Equal("sentiment", root.GetProperty("name").GetString());
            var keys = config.EnumerateObject().Select(p => p.Name).ToList();
            Assert.Equal(keys.Order(StringComparer.Ordinal), keys);
        }
    }

    [Fact]
    public void ACompositionWithAFusionRoundTripsThroughAdapterSetupJson()
    {
        var model = TinyLlama.Model(scale: 3f);
        var set = BottleneckAdapters.Of(model);
        set.Add("a", BottleneckConfig.Houlsby(), seed: 1, trainable: false);
        set.Add("b", BottleneckConfig.Pfeiffer(), seed: 2, trainable: false);
        set.Add("c", BottleneckConfig.Parallel(), seed: 3, trainable: false);
        var fuse = AdapterSetup.Fuse("a", "b");
        set.AddFusion(fuse, seed: 4);
        BottleneckAdapterTests.Randomize(set, 90);
        set.ActiveSetup = AdapterSetup.Stack(fuse, AdapterSetup.Average([1, 2], "c", "a"));
        using var first = new TempFolder();
        using var second = new TempFolder();
        set.Save(first.Path);
        Assert.Equal(["a", "a,b", "adapter_setup.json", "b", "c"], first.Entries());
        Assert.True(File.Exists(Path.Combine(first.Path, "a,b", "model_adapter_fusion.safetensors")));
        using (var json = JsonDocument.Parse(File.ReadAllBytes(first.File("adapter_setup.json"))))
        {
            var setup = json.RootElement.GetProperty("adapter_setup");
            Assert.Equal("Stack", setup.GetProperty("type").GetString());
            Assert.Equal("Fuse", setup.GetProperty("children")[0].GetProperty("type").GetString());
            Assert.Equal("a", setup.GetProperty("children")[0].GetProperty("children")[0].GetString());
        }

        var other = TinyLlama.Model(scale: 3f);
        var loaded = BottleneckAdapters.Load(other, first.Path);
        Assert.Equal(set.ActiveSetup.ToString(), loaded.ActiveSetup!.ToString());
        loaded.Save(second.Path);
        Assert.Equal(Bytes(first.Path), Bytes(second.Path));
        using var scope = Tape.NoGrad();
        Assert.Equal(model.Forward(TinyLlama.Inputs).Data, other.Forward(TinyLlama.Inputs).Data);
    }

    [Fact]
    public void StrictLoadingNamesWhatIsWrong()
    {
        var model = TinyLlama.Model();
        using var folder = new TempFolder();
        Trained(model, BottleneckConfig.Houlsby()).Save(folder.Path);

        // Another hidden size.
        var wide = TinyLlama.Model(LlamaConfig.Tiny(40) with { HiddenSize = 32, HeadDim = 8 });
        Assert.Contains("hidden_size is 64", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(wide, folder.Path)).Message);

        // Fewer layers: the file has tensors for layer 1.
        var shallow = TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1 });
        var error = Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(shallow, folder.Path)).Message;
        Assert.Contains("layer 1", error);
        Assert.Contains("1 layers", error);
        Assert.Empty(BottleneckAdapters.Find(shallow)!.AdapterNames);

        // A missing tensor, a wrong shape, an unsupported field.
        var tensors = new List<SafeTensor>();
        using (var file = SafeTensorsFile.Open(folder.File("adapter.safetensors")))
        {
            foreach (var name in file.Names.Skip(1))
            {
                var info = file.GetInfo(name);
                tensors.Add(new SafeTensor(name, info.DType, [.. info.Shape], file.ReadBytes(name)));
            }
        }

        using var broken = new TempFolder();
        File.Copy(folder.File("adapter_config.json"), broken.File("adapter_config.json"));
        SafeTensorsWriter.Write(broken.File("adapter.safetensors"), tensors);
        Assert.Contains("adapter_down.0.bias' is missing", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), broken.Path)).Message);
        tensors.Insert(0, SafeTensor.FromFloat32("model.layers.0.attention_adapters.adapters.sentiment.adapter_down.0.bias", new float[3], 3));
        SafeTensorsWriter.Write(broken.File("adapter.safetensors"), tensors);
        Assert.Contains("shape [3]; expected [4]", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), broken.Path)).Message);
        tensors[0] = SafeTensor.FromFloat32("model.layers.0.attention_adapters.adapters.other.adapter_down.0.bias", new float[4], 4);
        SafeTensorsWriter.Write(broken.File("adapter.safetensors"), tensors);
        Assert.Contains("unexpected tensor", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), broken.Path)).Message);
        File.WriteAllText(broken.File("adapter_config.json"), File.ReadAllText(folder.File("adapter_config.json")).Replace("\"ln_after\": false", "\"ln_after\": true", StringComparison.Ordinal));
        Assert.Contains("'ln_after'", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), broken.Path)).Message);
    }

    [Fact]
    public void ASetupNamingAnAdapterOfAnotherNameIsRefused()
    {
        var model = TinyLlama.Model();
        var set = BottleneckAdapters.Of(model);
        set.Add("a", BottleneckConfig.Pfeiffer());
        set.Add("b", BottleneckConfig.Pfeiffer());
        set.ActiveSetup = AdapterSetup.Stack("a", "b");
        using var folder = new TempFolder();
        set.Save(folder.Path);
        Directory.Delete(Path.Combine(folder.Path, "b"), recursive: true);
        Directory.Move(Path.Combine(folder.Path, "a"), Path.Combine(folder.Path, "b"));
        set.SaveAdapter("a", Path.Combine(folder.Path, "a"));
        var error = Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), folder.Path)).Message;
        Assert.Contains("named 'a' but adapter_setup.json expects 'b'", error);
        File.WriteAllText(folder.File("adapter_setup.json"), "{\"adapter_setup\": {\"type\": \"Split\", \"children\": [\"a\"]}}");
        Assert.Contains("'Split' is not supported", Assert.Throws<InvalidDataException>(() => BottleneckAdapters.Load(TinyLlama.Model(), folder.Path)).Message);
    }

    private static string TempPath(out TempFolder folder)
    {
        folder = new TempFolder();
        return folder.Path;
    }
}
