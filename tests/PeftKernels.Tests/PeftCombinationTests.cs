// PeftModel.AddWeightedAdapter and FederatedAverage on a tiny Llama (docs/formats/methods.md#weighted-combination):
// each combination type against its formula at the model level (cat exactly, svd
// within its truncation, linear by its √|w·s| factors, the pruning types against
// AdapterCombination itself), the new adapter's config and files, and federated averaging.
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class PeftCombinationTests : IDisposable
{
    private static readonly int[] Tokens = [3, 1, 4, 1, 5, 9, 2, 6];

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>"a" r 4 on q, v; "b" r 4 on q, down; "c" r 2 on q; all random.</summary>
    private static (LlamaForCausalLM Model, PeftModel Peft) ThreeAdapters()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj,v_proj"), "a");
        peft.AddAdapter("b", PeftModelTests.Config("q_proj,down_proj", alpha: 4), seed: 1);
        peft.AddAdapter("c", PeftModelTests.Config("q_proj", r: 2, alpha: 3) with { UseRsLora = true }, seed: 2);
        PeftModelTests.Randomize(model, "a", 10);
        PeftModelTests.Randomize(model, "b", 20);
        PeftModelTests.Randomize(model, "c", 30);
        return (model, peft);
    }

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Tokens).Data;
    }

    /// <summary>s·B·A of one adapter on one layer in double, [out, in] (zeros when the layer lacks it).</summary>
    private static double[] Delta(Linear layer, string adapter)
    {
        var d = new double[layer.OutFeatures * layer.InFeatures];
        if (layer.Adapters.FirstOrDefault(a => a.Name == adapter) is not { } f)
        {
            return d;
        }

        for (int o = 0; o < layer.OutFeatures; o++)
        {
            for (int q = 0; q < f.Rank; q++)
            {
                double c = f.Scale * f.B.Data[(o * f.Rank) + q];
                for (int i = 0; i < layer.InFeatures; i++)
                {
                    d[(o * layer.InFeatures) + i] += c * f.A.Data[(q * layer.InFeatures) + i];
                }
            }
        }

        return d;
    }

    private static double[] WeightedDelta(Linear layer, string[] adapters, double[] weights)
    {
        var sum = new double[layer.OutFeatures * layer.InFeatures];
        for (int k = 0; k < adapters.Length; k++)
        {
            var d = Delta(layer, adapters[k]);
            for (int j = 0; j < sum.Length; j++)
            {
                sum[j] += weights[k] * d[j];
            }
        }

        return sum;
    }

    private static IEnumerable<(string Name, Linear Layer)> Linears(Module model) =>
        model.NamedModules().Where(m => m.Module is Linear).Select(m => (m.Name, (Linear)m.Module));

    private static double SquaredNorm(IEnumerable<double> values) => values.Sum(v => v * v);

    [Fact]
    public void CatIsExactlyTheWeightedSumAndItsFolderLoadsBack()
    {
        var (model, peft) = ThreeAdapters();
        string[] names = ["a", "b", "c"];
        double[] weights = [0.7, -1.3, 0.5];
        var modules = peft.AddWeightedAdapter(names, weights, "cat", "cat");
        Assert.Equal(6, modules.Count);
        var config = Assert.IsType<LoraConfig>(peft.Adapters["cat"]);
        Assert.Equal((10, 10.0, false, false), (config.R, config.LoraAlpha, config.UseRsLora, config.UseDora));
        Assert.Equal(new[] { "down_proj", "q_proj", "v_proj" }, config.TargetModules!.Names);

        // q carries all three (rank 10); v only a and down only b (rank 4): a rank_pattern entry each, alpha = r.
        Assert.Equal(4, config.RankPattern["model.layers.1.self_attn.v_proj"]);
        Assert.Equal(4.0, config.AlphaPattern["model.layers.0.mlp.down_proj"]);
        Assert.Equal(new[] { "a" }, peft.ActiveAdapters);
        foreach (var (name, layer) in Linears(model).Where(l => modules.Contains(l.Name)))
        {
            var expected = WeightedDelta(layer, names, weights);
            var actual = Delta(layer, "cat");

            // cat stores wᵢsᵢAᵢ rounded to fp32 once: rank ≤ 10 sums of products ≤ ~5 in double, 1e-5 absolute.
            TestUtil.AssertClose([.. actual.Select(v => (float)v)], expected, 1e-5, 1e-5, $"cat ΔW of {name}");
        }

        peft.SetAdapter("cat");
        var combined = Logits(model);
        peft.SaveAdapter(folder.Path, "cat");
        var fresh = LlamaModelTests.TinyModel();
        new PeftModel(fresh).LoadAdapter(Path.Combine(folder.Path, "cat"), "cat");
        Assert.Equal(combined, Logits(fresh));

        // The same update as the three adapters with their B scaled by the weights, all active.
        for (int k = 0; k < names.Length; k++)
        {
            foreach (var (_, a) in Lora.Adapters(model, names[k]))
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(a.B.Data, (float)weights[k], a.B.Data);
            }
        }

        peft.SetAdapter(names);
        var summed = Logits(model);
        TestUtil.AssertClose(combined, summed, 1e-4 * summed.Max(Math.Abs), 1e-4, "cat logits vs the weighted adapters");
    }

    [Fact]
    public void SvdIsExactAtFullRankAndAnOrthogonalTruncationBelowIt()
    {
        var (model, peft) = ThreeAdapters();
        string[] names = ["a", "b"];
        double[] weights = [1, 0.5];
        peft.AddWeightedAdapter(names, weights, "full", "svd", svdRank: 8);
        peft.AddWeightedAdapter(names, weights, "low", combination: "svd", svdRank: 3);
        Assert.Equal(8, ((LoraConfig)peft.Adapters["full"]).R);
        var q = model.Model.Layers[1].SelfAttn.QProj;
        var expected = WeightedDelta(q, names, weights);
        double norm = Math.Sqrt(SquaredNorm(expected));

        // ΔW = Σ wᵢsᵢBᵢAᵢ has rank ≤ 8: the rank-8 SVD reproduces it up to fp32 factors (1e-5 of its norm).
        var full = Delta(q, "full");
        Assert.True(Math.Sqrt(SquaredNorm(full.Select((v, i) => v - expected[i]))) <= 1e-5 * norm, "rank-8 svd is not ΔW");

        // The rank-3 truncation U₃Σ₃V₃ᵀ is an orthogonal projection of ΔW: ‖ΔW − ΔW₃‖² = ‖ΔW‖² − ‖ΔW₃‖² > 0.
        var low = Delta(q, "low");
        double residual = SquaredNorm(low.Select((v, i) => v - expected[i]));
        Assert.True(residual > 1e-3 * norm * norm, "rank-3 truncation of a rank-8 ΔW lost nothing");
        Assert.Equal(SquaredNorm(expected) - SquaredNorm(low), residual, 1e-4 * norm * norm);
        var direct = AdapterCombination.Combine(
            [.. names.Select(n => q.Adapters.First(a => a.Name == n)).Select(a => new LoraFactors(a.A.Data, a.B.Data, a.Rank, 64, 64, a.Scale))],
            weights, new AdapterCombinationOptions { SvdRank = 3, Seed = PeftModel.CombinationSeed(0, "model.layers.1.self_attn.q_proj") });
        var lowAdapter = q.Adapters.First(a => a.Name == "low");
        Assert.Equal(direct.A, lowAdapter.A.Data);
        Assert.Equal(direct.B, lowAdapter.B.Data);
    }

    [Fact]
    public void LinearCombinesTheFactorsWithSquareRootWeights()
    {
        var (model, peft) = ThreeAdapters();
        double[] weights = [0.6, -0.8];
        peft.AddWeightedAdapter(["a", "b"], weights, "lin", "linear");
        var q = model.Model.Layers[0].SelfAttn.QProj;
        var (a, b, lin) = (q.Adapters.First(x => x.Name == "a"), q.Adapters.First(x => x.Name == "b"), q.Adapters.First(x => x.Name == "lin"));
        Assert.Equal(1f, lin.Scale);
        double ca = Math.Sqrt(weights[0] * a.Scale), cb = Math.Sqrt(-weights[1] * b.Scale);

        // A = √|w_a s_a|·A_a − √|w_b s_b|·A_b (A carries the sign), B = √|w_a s_a|·B_a + √|w_b s_b|·B_b; fp32 once.
        TestUtil.AssertClose(lin.A.Data, [.. a.A.Data.Select((v, i) => (ca * v) - (cb * b.A.Data[i]))], 1e-6, 1e-6, "linear A");
        TestUtil.AssertClose(lin.B.Data, [.. a.B.Data.Select((v, i) => (ca * v) + (cb * b.B.Data[i]))], 1e-6, 1e-6, "linear B");

        // v_proj carries only a: the single adapter's factors scaled by √(w_a s_a).
        var v = model.Model.Layers[0].SelfAttn.VProj;
        var va = v.Adapters.First(x => x.Name == "a");
        TestUtil.AssertClose(v.Adapters.First(x => x.Name == "lin").B.Data, [.. va.B.Data.Select(x => ca * x)], 1e-6, 1e-6, "linear B of one adapter");
        Assert.Contains("needs adapters of equal rank",
            Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a", "c"], [1, 1], "bad", "linear")).Message);
        Assert.DoesNotContain("bad", peft.Adapters.Keys);
    }

    [Theory]
    [InlineData("ties")]
    [InlineData("dare_linear")]
    [InlineData("dare_ties")]
    [InlineData("magnitude_prune")]
    public void PruningTypesAreAdapterCombinationModuleByModule(string type)
    {
        var (model, peft) = ThreeAdapters();
        double[] weights = [0.7, 0.4];
        peft.AddWeightedAdapter(["a", "b"], weights, "m", type, density: 0.5, majoritySignMethod: MajoritySignMethod.Frequency, seed: 9);
        int checkedModules = 0;
        foreach (var (name, layer) in Linears(model).Where(l => l.Layer.Adapters.Any(a => a.Name == "m")))
        {
            var present = new[] { "a", "b" }.Select((n, i) => (Adapter: layer.Adapters.FirstOrDefault(a => a.Name == n), Weight: weights[i])).Where(p => p.Adapter != null).ToList();
            var direct = AdapterCombination.Combine(
                [.. present.Select(p => new LoraFactors(p.Adapter!.A.Data, p.Adapter.B.Data, p.Adapter.Rank, layer.InFeatures, layer.OutFeatures, p.Adapter.Scale))],
                [.. present.Select(p => p.Weight)],
                new AdapterCombinationOptions
                {
                    Type = AdapterCombination.ParseType(type),
                    Density = 0.5,
                    MajoritySignMethod = MajoritySignMethod.Frequency,
                    Seed = PeftModel.CombinationSeed(9, name),
                });
            var m = layer.Adapters.First(a => a.Name == "m");
            Assert.Equal(direct.A, m.A.Data);
            Assert.Equal(direct.B, m.B.Data);
            checkedModules++;
        }

        Assert.Equal(6, checkedModules);
        Assert.Contains("needs a density", Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a", "b"], weights, "n", type)).Message);
    }

    [Fact]
    public void OnlyPlainLoraAdaptersCombine()
    {
        var (_, peft) = ThreeAdapters();
        peft.AddAdapter("ia3", new Ia3Config());
        peft.AddAdapter("dora", PeftModelTests.Config("q_proj") with { UseDora = true });
        Assert.Contains("it is IA3", Assert.Throws<NotSupportedException>(() => peft.AddWeightedAdapter(["a", "ia3"], [1, 1], "x", "cat")).Message);
        Assert.Contains("it is DoRA", Assert.Throws<NotSupportedException>(() => peft.AddWeightedAdapter(["dora", "a"], [1, 1], "x", "cat")).Message);
        Assert.Contains("no adapter named 'zz'", Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a", "zz"], [1, 1], "x")).Message);
        Assert.Contains("weights has 1 entries", Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a", "b"], [1], "x")).Message);
        Assert.Contains("unknown combination type 'mean'", Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a", "b"], [1, 1], "x", "mean")).Message);
        Assert.Contains("already has an adapter named 'b'", Assert.Throws<ArgumentException>(() => peft.AddWeightedAdapter(["a"], [1], "b")).Message);
        Assert.DoesNotContain("x", peft.Adapters.Keys);
    }

    [Fact]
    public void FederatedAverageWeighsEveryTensorBySampleCount()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model);
        long[] samples = [10, 30, 60];
        for (int k = 0; k < 3; k++)
        {
            peft.AddAdapter($"client{k}", PeftModelTests.Config("q_proj,v_proj") with { Bias = "none" }, seed: k);
            PeftModelTests.Randomize(model, $"client{k}", 100 * k);
            peft.AddAdapter($"ia3_{k}", new Ia3Config(), seed: k);
        }

        foreach (var (_, layer) in Linears(model))
        {
            foreach (var ia3 in layer.Ia3Adapters)
            {
                TestUtil.Random(ia3.Features, ia3.Name.Length + ia3.Features, 0.5f).CopyTo(ia3.L.Data, 0);
            }
        }

        var modules = peft.FederatedAverage([("client0", samples[0]), ("client1", samples[1]), ("client2", samples[2])], "avg");
        Assert.Equal(4, modules.Count);
        Assert.Equal(4, ((LoraConfig)peft.Adapters["avg"]).R);
        peft.FederatedAverage([("ia3_0", 1), ("ia3_2", 3)], "ia3_avg");
        foreach (var (_, layer) in Linears(model))
        {
            foreach (var avg in layer.Adapters.Where(a => a.Name == "avg"))
            {
                var clients = Enumerable.Range(0, 3).Select(k => layer.Adapters.First(a => a.Name == $"client{k}")).ToList();

                // Σ nₖθₖ / Σ nₖ in double, rounded to fp32 once on each side: equal within an ulp.
                TestUtil.AssertClose(avg.A.Data, [.. avg.A.Data.Select((_, i) => clients.Select((c, k) => samples[k] * (double)c.A.Data[i]).Sum() / 100)], 0, 2e-7, "averaged A");
                TestUtil.AssertClose(avg.B.Data, [.. avg.B.Data.Select((_, i) => clients.Select((c, k) => samples[k] * (double)c.B.Data[i]).Sum() / 100)], 0, 2e-7, "averaged B");
                Assert.False(avg.A.Trainable);
            }

            foreach (var avg in layer.Ia3Adapters.Where(a => a.Name == "ia3_avg"))
            {
                var (l0, l2) = (layer.Ia3Adapters.First(a => a.Name == "ia3_0").L.Data, layer.Ia3Adapters.First(a => a.Name == "ia3_2").L.Data);
                TestUtil.AssertClose(avg.L.Data, [.. l0.Select((v, i) => ((double)v + (3.0 * l2[i])) / 4)], 0, 2e-7, "averaged IA³");
            }
        }

        peft.AddAdapter("r2", PeftModelTests.Config("q_proj,v_proj", r: 2));
        Assert.Contains("client adapter 'r2' cannot be averaged with 'client0': its tensors (keys or shapes) differ",
            Assert.Throws<ArgumentException>(() => peft.FederatedAverage([("client0", 1), ("r2", 1)], "bad")).Message);
        Assert.Contains("it is IA3, client 0 is LORA",
            Assert.Throws<ArgumentException>(() => peft.FederatedAverage([("client0", 1), ("ia3_1", 1)], "bad")).Message);
        Assert.Contains("counts must be > 0", Assert.Throws<ArgumentException>(() => peft.FederatedAverage([("client0", 0), ("client1", 1)], "bad")).Message);
        Assert.DoesNotContain("bad", peft.Adapters.Keys);
    }
}
