using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Merge, unmerge, merge-and-unload and unload over fp32, bf16 and 4-bit bases.</summary>
public class PeftMergeTests
{
    private static readonly int[] Tokens = [3, 1, 4, 1, 5, 9, 2, 6];

    private static LlamaForCausalLM Model(TensorDType storage, LlamaConfig? config = null)
    {
        var model = LlamaModelTests.TinyModel(config);
        if (storage == TensorDType.BF16)
        {
            model = model.ToStorage(Models.WeightStorage.BFloat16);
        }
        else if (storage == TensorDType.Q4)
        {
            model.QuantizeLinears();
        }

        return model;
    }

    /// <summary>Adapter "a" on every Linear, "b" on q_proj and the embedding; both random and active.</summary>
    private static PeftModel TwoAdapters(LlamaForCausalLM model)
    {
        var peft = new PeftModel(model, PeftModelTests.Config("all-linear"), "a");
        peft.AddAdapter("b", PeftModelTests.Config("q_proj,embed_tokens", r: 2), seed: 1);
        PeftModelTests.Randomize(model, "a", 10);
        PeftModelTests.Randomize(model, "b", 20);
        peft.SetAdapter("a", "b");
        return peft;
    }

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Tokens).Data;
    }

    private static List<(string Name, Parameter P, float[] Values)> Snapshot(Module model) =>
        [.. model.NamedParameters().Where(p => !p.Name.Contains(".lora_", StringComparison.Ordinal)).Select(p => (p.Name, p.Parameter, p.Parameter.ToFloat32()))];

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    [InlineData(TensorDType.Q4)]
    public void MergeThenUnmergeRestoresTheBaseWeights(TensorDType storage)
    {
        var model = Model(storage);
        var peft = TwoAdapters(model);
        var before = Snapshot(model);
        var unmerged = Logits(model);
        peft.Merge();
        Assert.Equal(new[] { "a", "b" }, model.Model.Layers[0].SelfAttn.QProj.MergedAdapters);
        peft.Unmerge();
        Assert.Empty(model.Model.Layers[0].SelfAttn.QProj.MergedAdapters);
        foreach (var (name, p, values) in before)
        {
            var now = model.NamedParameters().First(e => e.Name == name).Parameter;
            if (p.DType != TensorDType.F32)
            {
                Assert.Same(p, now);
                continue;
            }

            // fp32: W + ΔW − ΔW in fp32 leaves at most a few roundings of |ΔW| ≪ 1e-6·max|W|.
            double scale = values.Max(Math.Abs);
            Assert.True(now.Data.Zip(values, (x, y) => Math.Abs(x - (double)y)).Max() <= 1e-6 * scale, $"{name} not restored within 1e-6 relative");
        }

        TestUtil.AssertClose(Logits(model), unmerged, 1e-5 * unmerged.Max(Math.Abs), 1e-5, "logits after unmerge");
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.Q4)]
    public void MergedLogitsEqualTheUnmergedAdapters(TensorDType storage)
    {
        var model = Model(storage);
        var peft = TwoAdapters(model);
        var unmerged = Logits(model);
        var report = peft.Merge();

        // The merged weights hold W + ΔW in fp32 (a 4-bit base is dequantized, not re-quantized): the
        // logits differ from the unmerged branches by fp32 reassociation only.
        TestUtil.AssertClose(Logits(model), unmerged, 1e-4 * unmerged.Max(Math.Abs), 1e-4, $"merged logits over {storage}");
        Assert.Equal(storage == TensorDType.Q4, report.FromQuantizedBase);
        Assert.Equal(0, report.MaxAbsError);
        Assert.Equal(14 + 2 + 1, report.Modules.Count);
        if (storage == TensorDType.Q4)
        {
            var q = report.Modules.First(m => m.BaseDType == TensorDType.Q4);
            Assert.Equal(TensorDType.F32, q.MergedDType);
            Assert.True(q.BytesAfter > 4 * q.BytesBefore);
        }
    }

    [Fact]
    public void Bf16MergeRoundsTheFp32SumAndReportsTheRounding()
    {
        var model = Model(TensorDType.BF16);
        var peft = new PeftModel(model, PeftModelTests.Config("v_proj"));
        PeftModelTests.Randomize(model, "default", 3);
        var v = model.Model.Layers[1].SelfAttn.VProj;
        var w = v.Weight.ToFloat32();
        var adapter = v.Adapters[0];
        var report = peft.Merge();
        Assert.Equal(TensorDType.BF16, v.Weight.DType);
        int inF = v.InFeatures, r = adapter.Rank;
        for (int o = 0; o < v.OutFeatures; o++)
        {
            for (int i = 0; i < inF; i++)
            {
                double exact = w[(o * inF) + i];
                for (int k = 0; k < r; k++)
                {
                    exact += adapter.Scale * adapter.B.Data[(o * r) + k] * (double)adapter.A.Data[(k * inF) + i];
                }

                // One bf16 rounding of the fp32 sum: half an ulp, at most 2⁻⁸ relative (8-bit significand), plus the fp32 sum's own rounding.
                double stored = Bf16.ToSingle(v.Weight.Bf16Bits[(o * inF) + i]);
                Assert.True(Math.Abs(stored - exact) <= (Math.Pow(2, -8) * Math.Abs(exact)) + 1e-6, $"element {o},{i}: {stored} vs {exact}");
            }
        }

        Assert.True(report.MaxAbsError > 0 && report.MeanAbsError > 0 && report.MeanAbsError <= report.MaxAbsError);
    }

    [Fact]
    public void LoraBiasAndEmbeddingMergeIntoBiasAndTable()
    {
        var model = LlamaForCausalLM.Create(PeftModelTests.Qwen2Like, 5);
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj") with { LoraBias = true });
        peft.AddAdapter("e", PeftModelTests.Config("embed_tokens"));
        PeftModelTests.Randomize(model, "default", 7);
        PeftModelTests.Randomize(model, "e", 8);
        peft.SetAdapter("default", "e");
        var q = model.Model.Layers[0].SelfAttn.QProj;
        var bias = (float[])q.Bias!.Data.Clone();
        var unmerged = Logits(model);
        peft.Merge();
        var adapter = q.Adapters[0];
        for (int o = 0; o < bias.Length; o++)
        {
            Assert.Equal(bias[o] + (adapter.Scale * adapter.Bias!.Data[o]), q.Bias.Data[o], 6);
        }

        TestUtil.AssertClose(Logits(model), unmerged, 1e-4 * unmerged.Max(Math.Abs), 1e-4, "merged bias + embedding");
        peft.Unmerge();
        Assert.Equal(bias, q.Bias.Data);

        var noBias = new PeftModel(LlamaModelTests.TinyModel(), PeftModelTests.Config("q_proj") with { LoraBias = true });
        var e = Assert.Throws<InvalidOperationException>(() => noBias.Merge());
        Assert.Contains("has a lora_B bias on 'model.layers.0.self_attn.q_proj', which has no bias", e.Message);
        Assert.Empty(((LlamaForCausalLM)noBias.Model).Model.Layers[0].SelfAttn.QProj.MergedAdapters);
    }

    [Fact]
    public void SafeMergeRefusesNonFiniteValuesAndChangesNothing()
    {
        var model = Model(TensorDType.F32);
        var peft = TwoAdapters(model);
        var last = model.Model.Layers[^1].Mlp.DownProj.Adapters[0];
        last.B.Data[5] = float.MaxValue;
        last.A.Data.AsSpan().Fill(float.MaxValue);
        var before = Snapshot(model);
        var logits = Logits(model);
        var e = Assert.Throws<InvalidOperationException>(() => peft.Merge(safe: true));
        // The value named is the merged one, read before the original is restored, at its [row, column].
        Assert.Matches(@"^safe merge of adapter 'a' into 'model\.layers\.1\.mlp\.down_proj\.weight' gives \d+ non-finite value\(s\) of \d+, the first (NaN|-?Infinity) at \[\d+, \d+\]; nothing was merged\.$", e.Message);
        foreach (var (name, p, values) in before)
        {
            var now = model.NamedParameters().First(x => x.Name == name).Parameter;
            Assert.Same(p, now);
            Assert.Equal(values, now.ToFloat32());
        }

        Assert.All(peft.Layers(), l => Assert.Empty(l.Layer.MergedAdapters));
        Assert.Equal(logits, Logits(model));
        peft.Merge(safe: false);
        Assert.Contains(model.Model.Layers[^1].Mlp.DownProj.Weight.Data, v => !float.IsFinite(v));
    }

    [Fact]
    public void MergeAndUnloadKeepsTheUpdateAndUnloadGivesTheBaseBack()
    {
        var model = Model(TensorDType.F32);
        var baseLogits = Logits(model);
        var baseSnapshot = Snapshot(model);
        var peft = TwoAdapters(model);
        peft.AddAdapter("head", PeftModelTests.Config("v_proj") with { ModulesToSave = ["lm_head"] });
        peft.SetAdapter("head");
        TestUtil.Random(40 * 64, 9).CopyTo(model.LmHead.Weight.Data, 0);
        peft.SetAdapter("a", "b", "head");
        var withAdapters = Logits(model);
        var merged = (LlamaForCausalLM)peft.MergeAndUnload();
        Assert.Same(model, merged);
        Assert.Empty(peft.Adapters);
        Assert.DoesNotContain(model.NamedParameters(), p => p.Name.Contains(".lora_", StringComparison.Ordinal) || p.Parameter.Trainable);
        TestUtil.AssertClose(Logits(model), withAdapters, 1e-4 * withAdapters.Max(Math.Abs), 1e-4, "merge-and-unload logits");

        var second = LlamaModelTests.TinyModel();
        var again = TwoAdapters(second);
        again.AddAdapter("head", PeftModelTests.Config("v_proj") with { ModulesToSave = ["lm_head"] });
        again.SetAdapter("head");
        TestUtil.Random(40 * 64, 9).CopyTo(second.LmHead.Weight.Data, 0);
        again.Unload();
        Assert.Equal(baseLogits, Logits(second));
        Assert.Equal(baseSnapshot.Select(s => s.Values), Snapshot(second).Select(s => s.Values));
    }

    [Fact]
    public void MergingATiedEmbeddingUntiesLmHeadAndSavesBothTables()
    {
        using var temp = new TempFolder();
        var config = LlamaConfig.Tiny(40) with { TieWordEmbeddings = true, HeadDim = 16 };
        var model = LlamaModelTests.TinyModel(config);
        var table = model.LmHead.Weight;
        var peft = new PeftModel(model, PeftModelTests.Config("embed_tokens,q_proj"));
        PeftModelTests.Randomize(model, "default", 11);
        var withAdapter = Logits(model);
        peft.MergeAndUnload();
        Assert.Same(table, model.LmHead.Weight);
        Assert.NotSame(table, model.Model.EmbedTokens.Weight);
        model.Save(temp.Path);
        var loaded = LlamaForCausalLM.Load(temp.Path);
        Assert.False(loaded.Config.TieWordEmbeddings);
        TestUtil.AssertClose(Logits(loaded), withAdapter, 1e-4 * withAdapter.Max(Math.Abs), 1e-4, "reloaded merged tied model");
    }

    [Fact]
    public void MergeStateErrorsAreClear()
    {
        var model = Model(TensorDType.F32);
        var peft = TwoAdapters(model);
        using (peft.DisableAdapter())
        {
            Assert.Contains("adapters are disabled", Assert.Throws<InvalidOperationException>(() => peft.Merge()).Message);
        }

        peft.Merge(adapterNames: ["b"]);
        Assert.Contains("'b' is already merged", Assert.Throws<ArgumentException>(() => peft.Merge(adapterNames: ["b"])).Message);
        Assert.Contains("unmerge before deleting", Assert.Throws<InvalidOperationException>(() => peft.DeleteAdapter("b")).Message);
        Assert.Contains("unmerge before disabling", Assert.Throws<InvalidOperationException>(() => peft.DisableAdapter()).Message);
        Assert.Throws<InvalidOperationException>(() => peft.Forward(Tokens, 1, ["a"]));
        peft.Merge();
        Assert.Equal(new[] { "b", "a" }, model.Model.Layers[0].SelfAttn.QProj.MergedAdapters);
    }
}
