// DoRA (use_dora) through PeftModel (docs/formats/methods.md#dora): the Linear-level forward and backward
// against DoraReference (norm held constant) and finite differences, over fp32, bf16 and 4-bit
// bases; the magnitude's init; logits against the double-precision reference (with a plain
// LoRA adapter beside it); merge / unmerge; the adapter folder (lora_magnitude_vector).
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

public sealed class PeftDoraTests : IDisposable
{
    private static readonly int[] Tokens = [3, 1, 4, 1, 5, 9, 2, 6];

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    private static LoraConfig Dora(string targets, int r = 4) => PeftModelTests.Config(targets, r) with { UseDora = true };

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Tokens).Data;
    }

    /// <summary>Random B (as PeftModelTests.Randomize) and magnitudes m = norm·(1 + U(−0.3, 0.3)), so that m / norm ≠ 1.</summary>
    private static void Randomize(LlamaForCausalLM model, string adapter, int seed)
    {
        PeftModelTests.Randomize(model, adapter, seed);
        foreach (var (module, a) in Lora.Adapters(model, adapter).Where(e => e.Adapter.UseDora))
        {
            var linear = (Linear)model.NamedModules().First(m => m.Name == module).Module;
            var norms = linear.WeightNorms(a);
            var noise = TestUtil.Random(norms.Length, seed++, 0.3f);
            for (int o = 0; o < norms.Length; o++)
            {
                a.Magnitude!.Data[o] = norms[o] * (1 + noise[o]);
            }
        }
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    [InlineData(TensorDType.Q4)]
    public void LinearForwardAndBackwardMatchTheReferenceWithTheNormHeldConstant(TensorDType storage)
    {
        const int n = 6, inF = 40, outF = 24, r = 3;
        var w = PeftIa3Tests.BaseWeight(storage, outF, inF, 1);
        var bias = new Parameter(TestUtil.Random(outF, 2), [outF]);
        var linear = new Linear(w, bias);
        var lora = new LoraAdapter("d", inF, outF, r, 6, 0f, false, 3, useDora: true);
        TestUtil.Random(outF * r, 4, 0.5f).CopyTo(lora.B.Data, 0);
        linear.AddAdapter(lora);
        linear.SetActiveAdapters("d");
        var noise = TestUtil.Random(outF, 5, 0.3f);
        var norms = linear.WeightNorms(lora);
        for (int o = 0; o < outF; o++)
        {
            lora.Magnitude!.Data[o] = norms[o] * (1 + noise[o]);
        }

        var x = new Parameter(TestUtil.Random(n * inF, 6), [n, inF], trainable: true);
        var y = linear.Forward(x);
        double[] xd = TestUtil.ToDouble(x.Data), wd = TestUtil.ToDouble(w.ToFloat32()), ad = TestUtil.ToDouble(lora.A.Data), bd = TestUtil.ToDouble(lora.B.Data),
            md = TestUtil.ToDouble(lora.Magnitude!.Data);
        double s = lora.Scale;
        var normsRef = DoraNormReference.RowNorms(wd, ad, bd, s, inF, outF, r);
        TestUtil.AssertClose(norms, normsRef, 1e-5, 1e-5, "row norms");
        var expected = DoraReference.Forward(xd, wd, TestUtil.ToDouble(bias.Data), ad, bd, md, normsRef, s, n, inF, outF, r);

        // fp32 dots of length in + r = 43 over values ≤ 1 and a scale m / norm within 30 % of 1: a few 1e-6.
        TestUtil.AssertClose(y.Data, expected, 1e-5, 1e-5, $"DoRA forward over {storage}");
        var g = TestUtil.Random(n * outF, 7);
        Tape.Backward(y, g);
        var (dx, da, db, dm) = DoraReference.Backward(TestUtil.ToDouble(g), xd, wd, ad, bd, md, normsRef, s, n, inF, outF, r);
        TestUtil.AssertClose(x.Grad!, dx, 1e-5, 1e-5, "dx");
        TestUtil.AssertClose(lora.A.Grad!, da, 1e-5, 1e-5, "dA");
        TestUtil.AssertClose(lora.B.Grad!, db, 1e-5, 1e-5, "dB");
        TestUtil.AssertClose(lora.Magnitude.Grad!, dm, 1e-5, 1e-5, "dm");

        // The norm depends on neither x nor m, so finite differences check those two exactly; for A and B they would
        // differentiate the norm too, which DoRA (and PEFT) deliberately does not.
        foreach (var p in lora.Parameters.Append(x))
        {
            p.Grad = null;
        }

        AutogradTests.Check(() => linear.Forward(x), ("x", x), ("magnitude", lora.Magnitude));
    }

    [Fact]
    public void MagnitudeStartsAtTheRowNormsAndTheModelAtTheBase()
    {
        var model = LlamaModelTests.TinyModel();
        var plain = Logits(model);
        var peft = new PeftModel(model, Dora("q_proj,v_proj,down_proj"));
        var down = model.Model.Layers[1].Mlp.DownProj;
        var w = down.Weight.Data;
        var m = down.Adapters[0].Magnitude!;
        Assert.Equal(new[] { 64 }, m.Shape);
        for (int o = 0; o < 64; o++)
        {
            double norm = Math.Sqrt(Enumerable.Range(0, 176).Sum(i => (double)w[(o * 176) + i] * w[(o * 176) + i]));
            Assert.Equal(norm, m.Data[o], 5e-6 * norm);
        }

        // m / norm = 1 exactly (one kernel computes both) and B = 0: the fused GEMM's reassociation only.
        TestUtil.AssertClose(Logits(model), plain, 1e-5 * plain.Max(Math.Abs), 1e-5, "fresh DoRA logits");

        // Per layer: q (4·64 + 64·4 + 64) + v (4·64 + 32·4 + 32) + down (4·176 + 64·4 + 64).
        Assert.Equal(2 * (576 + 416 + 1024), peft.TrainableParameters().Trainable);
    }

    [Fact]
    public void LogitsMatchTheReferenceBesideAPlainLoraAdapter()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, Dora("q_proj,down_proj"), "dora");
        peft.AddAdapter("plain", PeftModelTests.Config("q_proj,o_proj", r: 2), seed: 1);
        Randomize(model, "dora", 10);
        PeftModelTests.Randomize(model, "plain", 20);
        var onlyDora = LlamaReference.Logits(model, Tokens, ["dora"]);
        TestUtil.AssertClose(Logits(model), onlyDora, 1e-4 * onlyDora.Max(Math.Abs), 1e-4, "DoRA logits");
        peft.SetAdapter("plain", "dora");
        var both = LlamaReference.Logits(model, Tokens, ["plain", "dora"]);
        TestUtil.AssertClose(Logits(model), both, 1e-4 * both.Max(Math.Abs), 1e-4, "DoRA + LoRA logits");

        peft.AddAdapter("dora2", Dora("q_proj"), seed: 2);
        peft.SetAdapter("dora", "dora2");
        Assert.Contains("DoRA adapters 'dora' and 'dora2' are active together", Assert.Throws<NotSupportedException>(() => Logits(model)).Message);
        Assert.Contains("'dora' is DoRA", Assert.Throws<NotSupportedException>(() => peft.Forward(Tokens, 1, ["dora"])).Message);
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.Q4)]
    public void MergeKeepsTheLogitsAndUnmergeRestoresTheOriginalWeight(TensorDType storage)
    {
        var model = LlamaModelTests.TinyModel();
        if (storage == TensorDType.Q4)
        {
            model.QuantizeLinears();
        }

        var peft = new PeftModel(model, Dora("q_proj,v_proj,down_proj"), "dora");
        peft.AddAdapter("plain", PeftModelTests.Config("q_proj", r: 2), seed: 1);
        Randomize(model, "dora", 30);
        PeftModelTests.Randomize(model, "plain", 40);
        peft.SetAdapter("plain", "dora");
        var q = model.Model.Layers[0].SelfAttn.QProj;
        var original = q.Weight;
        var w = original.ToFloat32();
        var dora = q.Adapters.First(a => a.Name == "dora");
        var unmerged = Logits(model);
        var report = peft.Merge();

        // DoRA merges first on each layer (its norm is that of the weight its forward scales), then the plain branch.
        Assert.Equal(new[] { "dora", "plain" }, q.MergedAdapters);
        Assert.Equal(storage == TensorDType.Q4, report.FromQuantizedBase);
        TestUtil.AssertClose(Logits(model), unmerged, 1e-4 * unmerged.Max(Math.Abs), 1e-4, $"merged DoRA over {storage}");
        if (storage == TensorDType.F32)
        {
            var plain = q.Adapters.First(a => a.Name == "plain");
            var expected = DoraReference.Merge(TestUtil.ToDouble(w), TestUtil.ToDouble(dora.A.Data), TestUtil.ToDouble(dora.B.Data),
                TestUtil.ToDouble(dora.Magnitude!.Data), dora.Scale, 64, 64, dora.Rank);
            for (int o = 0; o < 64; o++)
            {
                for (int i = 0; i < 64; i++)
                {
                    expected[(o * 64) + i] += plain.Scale * Enumerable.Range(0, 2).Sum(k => (double)plain.B.Data[(o * 2) + k] * plain.A.Data[(k * 64) + i]);
                }
            }

            // fp32 norm, GEMM and scaling of values ≤ ~5: a few 1e-6.
            TestUtil.AssertClose(q.Weight.Data, expected, 2e-5, 1e-5, "merged q_proj weight");
        }

        peft.Unmerge();
        Assert.Same(original, q.Weight);
        Assert.Equal(w, q.Weight.ToFloat32());
        TestUtil.AssertClose(Logits(model), unmerged, 1e-5 * unmerged.Max(Math.Abs), 1e-5, "logits after unmerge");
    }

    [Fact]
    public void TheFolderHoldsTheMagnitudeAndRoundTripsByteForByte()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, Dora("q_proj,down_proj") with { LoraDropout = 0.1 });
        Randomize(model, "default", 50);
        peft.SaveAdapter(folder.Path);
        Assert.Contains("\"use_dora\": true", File.ReadAllText(folder.File(Lora.ConfigFile)));
        using (var file = SafeTensorsFile.Open(folder.File(Lora.WeightsFile)))
        {
            const string key = "base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector";
            Assert.Equal(new long[] { 64 }, file.GetInfo(key).Shape);
            Assert.Equal(model.Model.Layers[1].Mlp.DownProj.Adapters[0].Magnitude!.Data, file.ReadFloat32(key));
            Assert.Equal(12, file.Names.Count);
        }

        var fresh = LlamaModelTests.TinyModel();
        var loaded = new PeftModel(fresh);
        Assert.True(Assert.IsType<LoraConfig>(loaded.LoadAdapter(folder.Path)).UseDora);
        string again = Path.Combine(folder.Path, "again");
        loaded.SaveAdapter(again);
        foreach (string f in new[] { Lora.WeightsFile, Lora.ConfigFile })
        {
            Assert.Equal(File.ReadAllBytes(folder.File(f)), File.ReadAllBytes(Path.Combine(again, f)));
        }

        Assert.Equal(Logits(model), Logits(fresh));
    }

    [Fact]
    public void TrainingMovesTheMagnitudeAndTheFactors()
    {
        var model = LlamaModelTests.TinyModel();
        new PeftModel(model, Dora("q_proj,v_proj", r: 2) with { LoraDropout = 0.2 });
        var adapters = Lora.Adapters(model).Select(e => e.Adapter).ToList();
        var before = adapters.Select(a => (float[])a.Magnitude!.Data.Clone()).ToList();
        var rng = new Random(3);
        int[] inputs = [.. Enumerable.Range(0, 16).Select(_ => rng.Next(40))];
        var trainer = new Trainer(model, _ => (inputs, [.. inputs.Skip(1).Append(0)]), 2, new TrainerOptions { Steps = 3, LearningRate = 1e-2 });
        trainer.Run();
        Assert.True(trainer.Losses[^1] < trainer.Losses[0], $"loss did not fall: {string.Join(", ", trainer.Losses)}");
        for (int i = 0; i < adapters.Count; i++)
        {
            Assert.NotEqual(before[i], adapters[i].Magnitude!.Data);
            Assert.Contains(adapters[i].B.Data, v => v != 0f);
        }
    }
}
