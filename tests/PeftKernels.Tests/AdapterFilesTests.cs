using System.Text;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Adapter folders in PEFT layout: golden files both ways, byte-identical round trips, key names, refusals.</summary>
public sealed class AdapterFilesTests : IDisposable
{
    private const string P = "base_model.model.model.layers.";

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>Values exactly representable in F16 and BF16: multiples of 1/16 in [−0.5, 0.5].</summary>
    private static float[] Pattern(int count, int offset) => [.. Enumerable.Range(offset, count).Select(i => ((i % 17) - 8) / 16f)];

    [Fact]
    public void GoldenFolderLoadsToExactlyTheWrittenTensors()
    {
        // A config as PEFT writes it, plus fields this library does not know (tolerated on read).
        File.WriteAllText(folder.File(Lora.ConfigFile), """
            {
              "alpha_pattern": {"v_proj": 3},
              "base_model_name_or_path": "tiny",
              "bias": "none",
              "fan_in_fan_out": false,
              "inference_mode": true,
              "init_lora_weights": true,
              "layers_to_transform": [1],
              "lora_alpha": 4,
              "lora_dropout": 0.05,
              "megatron_config": null,
              "some_future_field": {"nested": [1, 2]},
              "peft_type": "LORA",
              "r": 2,
              "rank_pattern": {"v_proj": 1},
              "target_modules": ["v_proj", "q_proj"],
              "task_type": "CAUSAL_LM"
            }
            """);
        string q = P + "1.self_attn.q_proj.", v = P + "1.self_attn.v_proj.";
        float[] qa = Pattern(2 * 64, 0), qb = Pattern(64 * 2, 1), va = Pattern(64, 2), vb = Pattern(32, 3);
        SafeTensorsWriter.Write(folder.File(Lora.WeightsFile),
        [
            SafeTensor.FromFloat32(v + "lora_B.weight", vb, 32, 1),
            SafeTensor.FromBf16Bits(q + "lora_B.weight", qb.Select(Bf16.FromSingle).ToArray(), 64, 2),
            SafeTensor.FromHalf(v + "lora_A.weight", va.Select(x => (Half)x).ToArray(), 1, 64),
            SafeTensor.FromFloat32(q + "lora_A.weight", qa, 2, 64),
        ], new Dictionary<string, string> { ["format"] = "pt" });

        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model);
        var config = Assert.IsType<LoraConfig>(peft.LoadAdapter(folder.Path, "golden"));
        Assert.Equal((2, 4.0, 0.05, "tiny"), (config.R, config.LoraAlpha, config.LoraDropout, config.BaseModelNameOrPath));
        var adapters = Lora.Adapters(model, "golden").ToDictionary(e => e.Module, e => e.Adapter);
        Assert.Equal(new[] { "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj" }, adapters.Keys.Order());
        var qa2 = adapters["model.layers.1.self_attn.q_proj"];
        var va2 = adapters["model.layers.1.self_attn.v_proj"];
        Assert.Equal((qa, qb, 2f), (qa2.A.Data, qa2.B.Data, qa2.Scale), new ArraysAndScale());
        Assert.Equal((va, vb, 3f), (va2.A.Data, va2.B.Data, va2.Scale), new ArraysAndScale());
        Assert.All(adapters.Values.SelectMany(a => a.Parameters), p => Assert.False(p.Trainable));
        Assert.Equal(new[] { "golden" }, peft.ActiveAdapters);
    }

    [Fact]
    public void SavedFilesHaveTheExactPeftLayout()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, new LoraConfig { R = 1, LoraAlpha = 2, TargetModules = TargetModules.FromList("q_proj"), LayersToTransform = [0], BaseModelNameOrPath = "tiny" });
        var adapter = Lora.Adapters(model).Single().Adapter;
        Pattern(64, 0).CopyTo(adapter.A.Data, 0);
        Pattern(64, 5).CopyTo(adapter.B.Data, 0);
        peft.SaveAdapter(folder.Path);

        Assert.Equal("""
            {
              "alpha_pattern": {},
              "auto_mapping": null,
              "base_model_name_or_path": "tiny",
              "bias": "none",
              "exclude_modules": null,
              "fan_in_fan_out": false,
              "inference_mode": true,
              "init_lora_weights": true,
              "layers_pattern": null,
              "layers_to_transform": [
                0
              ],
              "lora_alpha": 2,
              "lora_bias": false,
              "lora_dropout": 0.0,
              "modules_to_save": null,
              "peft_type": "LORA",
              "peft_version": "0.20.0",
              "r": 1,
              "rank_pattern": {},
              "revision": null,
              "target_modules": [
                "q_proj"
              ],
              "task_type": "CAUSAL_LM",
              "use_dora": false,
              "use_rslora": false
            }
            """, File.ReadAllText(folder.File(Lora.ConfigFile)));

        // Header: metadata first, keys sorted, offsets contiguous, padded with spaces to 8 + N ≡ 0 (mod 8).
        string header = "{\"__metadata__\":{\"format\":\"pt\"},"
            + $"\"{P}0.self_attn.q_proj.lora_A.weight\":{{\"dtype\":\"F32\",\"shape\":[1,64],\"data_offsets\":[0,256]}},"
            + $"\"{P}0.self_attn.q_proj.lora_B.weight\":{{\"dtype\":\"F32\",\"shape\":[64,1],\"data_offsets\":[256,512]}}}}";
        header = header.PadRight(header.Length + ((8 - (header.Length % 8)) % 8));
        var bytes = File.ReadAllBytes(folder.File(Lora.WeightsFile));
        Assert.Equal((ulong)header.Length, BitConverter.ToUInt64(bytes, 0));
        Assert.Equal(header, Encoding.UTF8.GetString(bytes, 8, header.Length));
        var data = bytes.AsSpan(8 + header.Length);
        Assert.Equal(Pattern(64, 0).Concat(Pattern(64, 5)).SelectMany(BitConverter.GetBytes).ToArray(), data.ToArray());
    }

    [Fact]
    public void SaveLoadSaveIsByteIdenticalForEveryFeature()
    {
        var model = LlamaForCausalLM.Create(PeftModelTests.Qwen2Like, 2);
        var peft = new PeftModel(model, new LoraConfig
        {
            R = 4,
            LoraAlpha = 16,
            LoraDropout = 0.1,
            TargetModules = TargetModules.FromList("q_proj", "v_proj", "up_proj"),
            ExcludeModules = TargetModules.FromRegex(@"model\.layers\.1\.mlp\.up_proj"),
            Bias = "all",
            LoraBias = true,
            UseRsLora = true,
            InitLoraWeights = "gaussian",
            RankPattern = new Dictionary<string, int> { ["v_proj"] = 2 },
            AlphaPattern = new Dictionary<string, double> { ["up_proj"] = 2.5 },
            ModulesToSave = ["lm_head"],
        });
        peft.AddAdapter("emb", new LoraConfig { R = 3, TargetModules = TargetModules.Parse("embed_tokens,o_proj") }, seed: 4);
        PeftModelTests.Randomize(model, "default", 1);
        PeftModelTests.Randomize(model, "emb", 2);
        peft.SaveAdapter(folder.Path);
        peft.SaveAdapter(folder.Path, "emb");
        Assert.Equal(new[] { "emb" }, Directory.GetDirectories(folder.Path).Select(d => Path.GetFileName(d)));

        using var file = SafeTensorsFile.Open(folder.File(Lora.WeightsFile));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Contains("base_model.model.lm_head.weight", file.Names);
        Assert.Contains(P + "0.self_attn.q_proj.lora_B.bias", file.Names);
        Assert.Contains(P + "0.self_attn.q_proj.base_layer.bias", file.Names);
        Assert.Contains(P + "0.self_attn.k_proj.bias", file.Names);
        Assert.DoesNotContain(P + "1.mlp.up_proj.lora_A.weight", file.Names);
        Assert.Equal(new long[] { 2, 64 }, file.GetInfo(P + "1.self_attn.v_proj.lora_A.weight").Shape);
        using (var emb = SafeTensorsFile.Open(Path.Combine(folder.Path, "emb", Lora.WeightsFile)))
        {
            Assert.Equal(new long[] { 3, 40 }, emb.GetInfo("base_model.model.model.embed_tokens.lora_embedding_A").Shape);
            Assert.Equal(new long[] { 64, 3 }, emb.GetInfo("base_model.model.model.embed_tokens.lora_embedding_B").Shape);
            Assert.Contains(P + "1.self_attn.o_proj.lora_A.weight", emb.Names);
        }

        var fresh = LlamaForCausalLM.Create(PeftModelTests.Qwen2Like, 2);
        var loaded = new PeftModel(fresh);
        loaded.LoadAdapter(folder.Path);
        loaded.LoadAdapter(Path.Combine(folder.Path, "emb"), "emb");
        string second = Path.Combine(folder.Path, "again");
        loaded.SaveAdapter(second);
        loaded.SaveAdapter(second, "emb");
        foreach (string relative in new[] { Lora.WeightsFile, Lora.ConfigFile, Path.Combine("emb", Lora.WeightsFile), Path.Combine("emb", Lora.ConfigFile) })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(folder.Path, relative)), File.ReadAllBytes(Path.Combine(second, relative)));
        }

        peft.SetAdapter("default");
        loaded.SetAdapter("default");
        Assert.Equal(model.Forward([1, 2, 3]).Data, fresh.Forward([1, 2, 3]).Data);
    }

    [Fact]
    public void ZeroElementTensorsAreRefusedAndNothingIsWritten()
    {
        var holder = new Holder(new Linear(new Parameter(new float[0], [3, 0])));
        var peft = new PeftModel(holder, new LoraConfig { R = 4, TargetModules = TargetModules.FromList("proj") });
        peft.AddAdapter("other", new LoraConfig { R = 2, TargetModules = TargetModules.FromList("proj") });
        var e = Assert.Throws<InvalidOperationException>(() => peft.SaveAdapter(folder.Path));
        Assert.Contains("refusing to save zero-element tensors of adapter 'default': base_model.model.proj.lora_A.weight [4, 0]", e.Message);
        Assert.Throws<InvalidOperationException>(() => peft.SaveAdapter(folder.Path, "other"));
        Assert.Empty(folder.Entries());
    }

    private sealed class Holder(Linear proj) : Module
    {
        protected override IEnumerable<(string Name, Module Module)> Children() => [("proj", proj)];
    }

    private sealed class ArraysAndScale : IEqualityComparer<(float[] A, float[] B, float Scale)>
    {
        public bool Equals((float[] A, float[] B, float Scale) x, (float[] A, float[] B, float Scale) y) =>
            x.A.SequenceEqual(y.A) && x.B.SequenceEqual(y.B) && x.Scale == y.Scale;

        public int GetHashCode((float[] A, float[] B, float Scale) obj) => obj.Scale.GetHashCode();
    }
}
