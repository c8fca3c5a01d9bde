// IA³ adapters through PeftModel (docs/formats/methods.md#ia3, peft-adapters.md#tensor-keys): the Linear-level forward and
// backward against Ia3Reference and finite differences over fp32, bf16 and 4-bit bases, the
// Llama defaults, logits against the double-precision reference, merge / unmerge, the adapter
// folder both ways, and IA³ next to LoRA on the same layers.
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class PeftIa3Tests : IDisposable
{
    private const string P = "base_model.model.model.layers.";
    private static readonly int[] Tokens = [3, 1, 4, 1, 5, 9, 2, 6];

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>A base weight [out, in] stored as fp32, bf16 or NF4.</summary>
    internal static Parameter BaseWeight(TensorDType storage, int outF, int inF, int seed)
    {
        var values = TestUtil.Random(outF * inF, seed);
        return storage switch
        {
            TensorDType.F32 => new Parameter(values, [outF, inF]),
            TensorDType.BF16 => new Parameter(values.Select(Bf16.FromSingle).ToArray(), [outF, inF]),
            _ => new Parameter(QuantizedWeight.Quantize(values, [outF, inF], Quant4Type.Nf4, 32, true)),
        };
    }

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Tokens).Data;
    }

    /// <summary>Every IA³ vector of the adapter set to 1 + U(−0.5, 0.5).</summary>
    private static void RandomizeIa3(Module model, string adapter, int seed)
    {
        foreach (var (_, module) in model.NamedModules())
        {
            if (module is Linear linear && linear.Ia3Adapters.FirstOrDefault(a => a.Name == adapter) is { } ia3)
            {
                var values = TestUtil.Random(ia3.Features, seed++, 0.5f).Select(v => v + 1f).ToArray();
                values.CopyTo(ia3.L.Data, 0);
            }
        }
    }

    public static TheoryData<TensorDType, bool> StoragesAndKinds() => new()
    {
        { TensorDType.F32, false }, { TensorDType.F32, true }, { TensorDType.BF16, false }, { TensorDType.BF16, true }, { TensorDType.Q4, false }, { TensorDType.Q4, true },
    };

    [Theory]
    [MemberData(nameof(StoragesAndKinds))]
    public void LinearForwardAndBackwardMatchTheReferenceAndFiniteDifferences(TensorDType storage, bool feedforward)
    {
        const int n = 5, inF = 40, outF = 24;
        var w = BaseWeight(storage, outF, inF, 1);
        var bias = new Parameter(TestUtil.Random(outF, 2), [outF]);
        var linear = new Linear(w, bias);
        var ia3 = new Ia3Adapter("t", feedforward ? inF : outF, feedforward);
        TestUtil.Random(ia3.Features, 3, 0.5f).Select(v => v + 1f).ToArray().CopyTo(ia3.L.Data, 0);
        linear.AddAdapter(ia3);
        linear.SetActiveAdapters("t");
        var x = new Parameter(TestUtil.Random(n * inF, 4), [n, inF], trainable: true);
        var y = linear.Forward(x);

        double[] xd = TestUtil.ToDouble(x.Data), wd = TestUtil.ToDouble(w.ToFloat32()), bd = TestUtil.ToDouble(bias.Data), ld = TestUtil.ToDouble(ia3.L.Data);
        var expected = feedforward
            ? Ia3Reference.InputScalingForward(xd, wd, bd, ld, n, inF, outF)
            : Ia3Reference.OutputScalingForward(xd, wd, bd, ld, n, inF, outF);

        // fp32 dots of length 40 over values ≤ 1.5 against double: a few 1e-6 at most.
        TestUtil.AssertClose(y.Data, expected, 1e-5, 1e-5, $"IA³ forward ({storage}, feed-forward {feedforward})");
        var g = TestUtil.Random(n * outF, 5);
        Tape.Backward(y, g);
        var (dx, dl) = feedforward
            ? Ia3Reference.InputScalingBackward(TestUtil.ToDouble(g), xd, wd, ld, n, inF, outF)
            : Ia3Reference.OutputScalingBackward(TestUtil.ToDouble(g), xd, wd, bd, ld, n, inF, outF);
        TestUtil.AssertClose(x.Grad!, dx, 1e-5, 1e-5, "dx");
        TestUtil.AssertClose(ia3.L.Grad!, dl, 1e-5, 1e-5, "dl");
        x.Grad = null;
        ia3.L.Grad = null;
        AutogradTests.Check(() => linear.Forward(x), ("x", x), ("ia3_l", ia3.L));
    }

    [Fact]
    public void LlamaDefaultsWrapKVAndDownStartAsTheBaseAndMatchTheReference()
    {
        var model = LlamaModelTests.TinyModel();
        var plain = Logits(model);
        var peft = new PeftModel(model);
        var wrapped = peft.AddAdapter("default", new Ia3Config());
        Assert.Equal(
            ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
             "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"], wrapped);
        var layer = model.Model.Layers[0];
        Assert.Equal(new[] { 32, 1 }, layer.SelfAttn.KProj.Ia3Adapters[0].L.Shape);
        Assert.Equal(new[] { 1, 176 }, layer.Mlp.DownProj.Ia3Adapters[0].L.Shape);
        Assert.True(layer.Mlp.DownProj.Ia3Adapters[0].IsFeedforward);

        // Vectors of ones: every product is exact, so the logits are the base's bit for bit.
        Assert.Equal(plain, Logits(model));

        // Trainable: 2 layers × (32 + 32 + 176).
        Assert.Equal(480, peft.TrainableParameters().Trainable);
        RandomizeIa3(model, "default", 1);
        var expected = LlamaReference.Logits(model, Tokens, ["default"]);
        TestUtil.AssertClose(Logits(model), expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "IA³ logits");
        Assert.Throws<NotSupportedException>(() => peft.Forward(Tokens, 1, ["default"]));
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    [InlineData(TensorDType.Q4)]
    public void MergeKeepsTheLogitsAndUnmergeRestoresTheWeights(TensorDType storage)
    {
        var model = LlamaModelTests.TinyModel(PeftModelTests.Qwen2Like);
        if (storage == TensorDType.BF16)
        {
            model = model.ToStorage(Models.WeightStorage.BFloat16);
        }
        else if (storage == TensorDType.Q4)
        {
            model.QuantizeLinears();
        }

        var peft = new PeftModel(model);
        peft.AddAdapter("s", new Ia3Config());
        RandomizeIa3(model, "s", 7);
        var before = model.NamedParameters().Where(p => !p.Name.Contains(".ia3_l.", StringComparison.Ordinal))
            .Select(p => (p.Name, p.Parameter, Values: p.Parameter.ToFloat32())).ToList();
        var unmerged = Logits(model);
        var report = peft.Merge();
        Assert.Equal(6, report.Modules.Count);
        var k = model.Model.Layers[0].SelfAttn.KProj;
        var l = k.Ia3Adapters[0].L.Data;
        var kBias = before.First(b => b.Name == "model.layers.0.self_attn.k_proj.bias").Values;
        Assert.Equal(kBias.Select((b, o) => b * l[o]), k.Bias!.Data);

        // Merged weights hold diag(l)·W (or W·diag(l)) in fp32 (a 4-bit base is dequantized): reassociation only. A bf16
        // weight stores the product rounded to 8 significant bits (2⁻⁹ relative, the report's error), ~1e-2 of the logits.
        double tolerance = storage == TensorDType.BF16 ? 2e-2 : 1e-4;
        Assert.Equal(storage == TensorDType.BF16, report.MaxAbsError > 0);
        TestUtil.AssertClose(Logits(model), unmerged, tolerance * unmerged.Max(Math.Abs), tolerance, $"merged IA³ over {storage}");
        peft.Unmerge();
        foreach (var (name, p, values) in before)
        {
            var now = model.NamedParameters().First(e => e.Name == name).Parameter;
            if (storage != TensorDType.F32 && name.EndsWith(".weight", StringComparison.Ordinal))
            {
                Assert.Same(p, now);
                continue;
            }

            // Unmerge divides by l + 1e-8 as PEFT does: not exact. (w·l)/(l + 1e-8) is w within two fp32 roundings
            // (l + 1e-8 rounds to l for these l ≥ 0.5), i.e. 2⁻²³ relative; biases are restored exactly.
            double relative = name.EndsWith(".bias", StringComparison.Ordinal) ? 0 : Math.Pow(2, -22);
            Assert.True(now.Data.Zip(values, (a, b) => Math.Abs(a - (double)b) - (relative * Math.Abs(b))).Max() <= 0, $"{name} not restored");
        }

        TestUtil.AssertClose(Logits(model), unmerged, 1e-5 * unmerged.Max(Math.Abs), 1e-5, "logits after unmerge");
    }

    [Fact]
    public void MergeAndUnloadBakesTheScalingInAndUnloadGivesTheBaseBack()
    {
        var model = LlamaModelTests.TinyModel();
        var plain = Logits(model);
        var peft = new PeftModel(model);
        peft.AddAdapter("default", new Ia3Config());
        RandomizeIa3(model, "default", 5);
        var scaled = Logits(model);
        Assert.Same(model, peft.MergeAndUnload());
        Assert.DoesNotContain(model.NamedParameters(), p => p.Name.Contains(".ia3_l.", StringComparison.Ordinal) || p.Parameter.Trainable);
        TestUtil.AssertClose(Logits(model), scaled, 1e-4 * scaled.Max(Math.Abs), 1e-4, "merged-and-unloaded IA³");

        var other = LlamaModelTests.TinyModel();
        var again = new PeftModel(other);
        again.AddAdapter("default", new Ia3Config());
        RandomizeIa3(other, "default", 5);
        again.Unload();
        Assert.Empty(again.Adapters);
        Assert.Equal(plain, Logits(other));
    }

    [Fact]
    public void GoldenFolderLoadsToTheWrittenTensorsAndSavesAsPeftDoes()
    {
        File.WriteAllText(folder.File(Lora.ConfigFile), """
            {"peft_type": "IA3", "task_type": "CAUSAL_LM", "target_modules": ["k_proj", "down_proj"],
             "feedforward_modules": ["down_proj"], "init_ia3_weights": true, "some_future_field": [1]}
            """);
        float[] k0 = [.. Enumerable.Range(0, 32).Select(i => i / 16f)], down1 = [.. Enumerable.Range(0, 176).Select(i => (i % 9) / 8f)];
        SafeTensorsWriter.Write(folder.File(Lora.WeightsFile),
        [
            SafeTensor.FromFloat32(P + "0.self_attn.k_proj.ia3_l", k0, 32, 1),
            SafeTensor.FromFloat32(P + "1.self_attn.k_proj.ia3_l", k0, 32, 1),
            SafeTensor.FromFloat32(P + "0.mlp.down_proj.ia3_l", down1, 1, 176),
            SafeTensor.FromBf16Bits(P + "1.mlp.down_proj.ia3_l", down1.Select(Bf16.FromSingle).ToArray(), 1, 176),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model);
        var config = Assert.IsType<Ia3Config>(peft.LoadAdapter(folder.Path, "g"));
        Assert.Equal(new[] { "down_proj", "k_proj" }, config.EffectiveTargets.Names!.Order());
        Assert.Equal(k0, model.Model.Layers[1].SelfAttn.KProj.Ia3Adapters[0].L.Data);
        Assert.Equal(down1, model.Model.Layers[1].Mlp.DownProj.Ia3Adapters[0].L.Data);
        Assert.Empty(model.Model.Layers[1].SelfAttn.VProj.Ia3Adapters);
        Assert.False(model.Model.Layers[1].Mlp.DownProj.Ia3Adapters[0].L.Trainable);

        string saved = Path.Combine(folder.Path, "saved");
        peft.SaveAdapter(saved, "g");
        Assert.Equal("""
            {
              "auto_mapping": null,
              "base_model_name_or_path": null,
              "exclude_modules": null,
              "fan_in_fan_out": false,
              "feedforward_modules": [
                "down_proj"
              ],
              "inference_mode": true,
              "init_ia3_weights": true,
              "modules_to_save": null,
              "peft_type": "IA3",
              "peft_version": "0.20.0",
              "revision": null,
              "target_modules": [
                "down_proj",
                "k_proj"
              ],
              "task_type": "CAUSAL_LM"
            }
            """, File.ReadAllText(Path.Combine(saved, "g", Lora.ConfigFile)));
        using var file = SafeTensorsFile.Open(Path.Combine(saved, "g", Lora.WeightsFile));
        Assert.Equal(new long[] { 1, 176 }, file.GetInfo(P + "1.mlp.down_proj.ia3_l").Shape);
        Assert.Equal(SafeTensorDType.F32, file.GetInfo(P + "1.mlp.down_proj.ia3_l").DType);
        Assert.Equal(down1, file.ReadFloat32(P + "1.mlp.down_proj.ia3_l"));
    }

    [Fact]
    public void SaveLoadSaveIsByteIdentical()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model);
        peft.AddAdapter("default", new Ia3Config
        {
            TargetModules = TargetModules.FromList("q_proj", "up_proj", "down_proj"),
            FeedforwardModules = TargetModules.FromList("down_proj"),
            ExcludeModules = TargetModules.FromRegex(@"model\.layers\.1\.mlp\.up_proj"),
            InitIa3Weights = false,
            ModulesToSave = ["lm_head"],
        }, seed: 3);
        peft.SaveAdapter(folder.Path);
        var fresh = LlamaModelTests.TinyModel();
        var loaded = new PeftModel(fresh);
        loaded.LoadAdapter(folder.Path);
        string again = Path.Combine(folder.Path, "again");
        loaded.SaveAdapter(again);
        foreach (string f in new[] { Lora.WeightsFile, Lora.ConfigFile })
        {
            Assert.Equal(File.ReadAllBytes(folder.File(f)), File.ReadAllBytes(Path.Combine(again, f)));
        }

        using var file = SafeTensorsFile.Open(folder.File(Lora.WeightsFile));
        Assert.Equal(
            ["base_model.model.lm_head.weight", P + "0.mlp.down_proj.ia3_l", P + "0.mlp.up_proj.ia3_l", P + "0.self_attn.q_proj.ia3_l",
             P + "1.mlp.down_proj.ia3_l", P + "1.self_attn.q_proj.ia3_l"], file.Names.Order(StringComparer.Ordinal));
        Assert.Equal(Logits(model), Logits(fresh));
    }

    [Fact]
    public void BadFoldersAreRefusedWithClearErrors()
    {
        var source = new PeftModel(LlamaModelTests.TinyModel());
        source.AddAdapter("default", new Ia3Config());
        source.SaveAdapter(folder.Path);
        string config = File.ReadAllText(folder.File(Lora.ConfigFile));

        File.WriteAllText(folder.File(Lora.ConfigFile), config.Replace("\"down_proj\"\n  ],\n  \"inference_mode\"", "\"o_proj\"\n  ],\n  \"inference_mode\"", StringComparison.Ordinal));
        var peft = new PeftModel(LlamaModelTests.TinyModel());
        var e = Assert.Throws<InvalidDataException>(() => peft.LoadAdapter(folder.Path));
        Assert.Contains("feedforward_modules must be a subset of target_modules [down_proj, k_proj, v_proj]; [o_proj] is not a target", e.Message);
        Assert.Empty(peft.Adapters);

        File.WriteAllText(folder.File(Lora.ConfigFile), config);
        List<SafeTensor> tensors;
        using (var file = SafeTensorsFile.Open(folder.File(Lora.WeightsFile)))
        {
            tensors = [.. file.Names.Select(k => SafeTensor.FromFloat32(k, file.ReadFloat32(k), [.. file.GetInfo(k).Shape.Reverse()]))];
        }

        SafeTensorsWriter.Write(folder.File(Lora.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        e = Assert.Throws<InvalidDataException>(() => peft.LoadAdapter(folder.Path));
        Assert.Contains("module 'model.layers.0.mlp.down_proj' ia3_l (feed-forward, input scaling): expected shape [1, 176], found [176, 1]", e.Message);
        Assert.Contains("module 'model.layers.1.self_attn.k_proj' ia3_l (output scaling): expected shape [32, 1], found [1, 32]", e.Message);
        Assert.Empty(peft.Adapters);
    }

    [Fact]
    public void LoraAndIa3ShareLayersUnderDifferentNames()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, PeftModelTests.Config("k_proj,down_proj,q_proj"), "lora");
        peft.AddAdapter("ia3", new Ia3Config());
        PeftModelTests.Randomize(model, "lora", 2);
        RandomizeIa3(model, "ia3", 3);
        peft.SetAdapter("lora", "ia3");
        var expected = LlamaReference.Logits(model, Tokens, ["lora", "ia3"]);
        var both = Logits(model);
        TestUtil.AssertClose(both, expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "LoRA + IA³ logits");

        // Merging the scaling alone would leave the LoRA branch outside it: refused, nothing merged.
        var e = Assert.Throws<InvalidOperationException>(() => peft.Merge(adapterNames: ["ia3"]));
        Assert.Contains("cannot merge IA³ adapter 'ia3' into 'model.layers.0.self_attn.k_proj' while LoRA adapter 'lora' runs unmerged on it", e.Message);
        Assert.All(peft.Layers(), l => Assert.Empty(l.Layer.MergedAdapters));
        peft.Merge(adapterNames: ["ia3", "lora"]);
        Assert.Equal(new[] { "lora", "ia3" }, model.Model.Layers[0].SelfAttn.KProj.MergedAdapters);
        TestUtil.AssertClose(Logits(model), both, 1e-4 * both.Max(Math.Abs), 1e-4, "merged LoRA + IA³");
        peft.Unmerge();
        TestUtil.AssertClose(Logits(model), both, 1e-5 * both.Max(Math.Abs), 1e-5, "unmerged LoRA + IA³");
        peft.DeleteAdapter("ia3");
        Assert.Empty(model.Model.Layers[0].SelfAttn.KProj.Ia3Adapters);
        Assert.Single(model.Model.Layers[0].SelfAttn.KProj.Adapters);
    }
}
