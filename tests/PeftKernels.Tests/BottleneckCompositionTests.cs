using PeftKernels.Autograd;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Composition of bottleneck adapters: Stack, Average (the weighted mean, not AdapterHub's extra 1/n), Fuse, Parallel (batch
/// replicated) and the per-row switch, each against the adapters run alone; and a fusion over two frozen adapters that trains.
/// </summary>
public class BottleneckCompositionTests
{
    private const int Rows = 4;

    private static (LlamaForCausalLM Model, BottleneckAdapters Set) TwoAdapters()
    {
        var model = TinyLlama.Model(scale: 3f);
        var set = BottleneckAdapters.Of(model);
        set.Add("a", BottleneckConfig.Houlsby() with { ReductionFactor = 8 }, seed: 1, trainable: false);
        set.Add("b", BottleneckConfig.Pfeiffer() with { ReductionFactor = 8 }, seed: 2, trainable: false);
        BottleneckAdapterTests.Randomize(set, 50);
        return (model, set);
    }

    private static (Tensor X, Tensor A) Inputs(int h) =>
        (new Tensor(TestUtil.Random(Rows * h, 60), Rows, h), new Tensor(TestUtil.Random(Rows * h, 61), Rows, h));

    private static double[] Plus(params float[][] terms) =>
        [.. Enumerable.Range(0, terms[0].Length).Select(i => terms.Sum(t => (double)t[i]))];

    [Fact]
    public void StackAppliesTheAdaptersInOrderEachSeeingThePreviousOutput()
    {
        var (model, set) = TwoAdapters();
        var site = set.Sites[1];
        var (x, a) = Inputs(model.Config.HiddenSize);
        set.ActiveSetup = AdapterSetup.Stack("a", "b");
        var y = site.Apply(x, a, 1, ForwardContext.Default).Data;

        // a (Houlsby) on the output a; then b (Pfeiffer) on c + x where c = a + A_a(a).
        var da = BottleneckAdapterTests.Reference(site.Adapter("a")!, a.Data, Rows).Select(v => (float)v).ToArray();
        var c = Plus(a.Data, da).Select(v => (float)v).ToArray();
        var db = BottleneckAdapterTests.Reference(site.Adapter("b")!, [.. c.Select((v, i) => v + x.Data[i])], Rows).Select(v => (float)v).ToArray();
        TestUtil.AssertClose(y, Plus(x.Data, a.Data, da, db), 1e-4, 1e-4, "Stack(a, b)");
    }

    [Fact]
    public void AverageIsTheWeightedMeanOfTheOutputs()
    {
        var (model, set) = TwoAdapters();
        var site = set.Sites[1];
        var (x, a) = Inputs(model.Config.HiddenSize);
        set.ActiveSetup = AdapterSetup.Average([3, 1], "a", "b");
        Assert.Equal([0.75, 0.25], set.ActiveSetup.Weights);
        var y = site.Apply(x, a, 1, ForwardContext.Default).Data;
        set.ActiveSetup = "a";
        var ya = site.Apply(x, a, 1, ForwardContext.Default).Data;
        set.ActiveSetup = "b";
        var yb = site.Apply(x, a, 1, ForwardContext.Default).Data;

        // Σ w_i·h_i with Σ w = 1 (AdapterHub would give (1/n)·Σ w_i·h_i, halving the residual as well).
        TestUtil.AssertClose(y, [.. ya.Select((v, i) => (0.75 * v) + (0.25 * yb[i]))], 1e-4, 1e-4, "Average(a, b; 3, 1)");
    }

    [Fact]
    public void FuseMixesTheAdapterOutputsByAttention()
    {
        var (model, set) = TwoAdapters();
        var fuse = AdapterSetup.Fuse("a", "b");
        set.AddFusion(fuse, seed: 5);
        set.ActiveSetup = fuse;
        var site = set.Sites[1];
        var fusion = site.Fusion("a,b")!;
        Assert.Equal(TestUtil.ToDouble(Enumerable.Range(0, 64 * 64).Select(i => i % 65 == 0 ? 1f : 0f).ToArray()), TestUtil.ToDouble(fusion.ValueWeight!.Data));
        BottleneckAdapterTests.Randomize(set, 70);
        var (x, a) = Inputs(model.Config.HiddenSize);
        var y = site.Apply(x, a, 1, ForwardContext.Default).Data;

        int h = model.Config.HiddenSize;
        float[] Linear(float[] input, Parameter w, Parameter? b) =>
            [.. Enumerable.Range(0, Rows * h).Select(i => (float)((b?.Data[i % h] ?? 0) + Enumerable.Range(0, h).Sum(k => (double)input[((i / h) * h) + k] * w.Data[((i % h) * h) + k])))];
        var ua = BottleneckAdapterTests.Reference(site.Adapter("a")!, a.Data, Rows).Select(v => (float)v).ToArray();
        var zb = a.Data.Select((v, i) => v + x.Data[i]).ToArray();
        var ub = BottleneckAdapterTests.Reference(site.Adapter("b")!, zb, Rows).Select(v => (float)v).ToArray();

        // The query is the last fused adapter's input (b is Pfeiffer: output + residual).
        var q = Linear(zb, fusion.QueryWeight, fusion.QueryBias);
        var k = Linear(ua, fusion.KeyWeight, fusion.KeyBias).Concat(Linear(ub, fusion.KeyWeight, fusion.KeyBias)).ToArray();
        var v = Linear(ua, fusion.ValueWeight!, null).Concat(Linear(ub, fusion.ValueWeight!, null)).ToArray();
        var mix = FusionMixReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), Rows, h, 2, 1);
        TestUtil.AssertClose(y, [.. mix.Select((m, i) => m + x.Data[i] + a.Data[i])], 1e-3, 1e-3, "Fuse(a, b)");
    }

    [Fact]
    public void FuseOverTwoFrozenAdaptersTrainsOnlyTheFusionWithItsRegularization()
    {
        var (model, set) = TwoAdapters();
        var fuse = AdapterSetup.Fuse("a", "b");
        set.AddFusion(fuse, seed: 6);
        set.ActiveSetup = fuse;
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Name).ToList();
        Assert.All(trainable, n => Assert.Contains(".adapter_fusion_layer.a,b.", n, StringComparison.Ordinal));
        Assert.Contains("model.layers.0.output_adapters.adapter_fusion_layer.a,b.value.weight", trainable);

        // With V = I the regularization is 0; moving V adds 0.01·‖I − V‖²_F per fusion layer to the loss.
        var baseLoss = model.Loss(TinyLlama.Inputs, TinyLlama.Labels).Item();
        Tape.Clear();
        var v = set.Sites[1].Fusion("a,b")!.ValueWeight!;
        v.Data[1] += 2f;
        float withReg = model.Loss(TinyLlama.Inputs, TinyLlama.Labels).Item();
        Tape.Clear();
        float noReg;
        using (Tape.NoGrad())
        {
            noReg = model.Loss(TinyLlama.Inputs, TinyLlama.Labels).Item();
        }

        Assert.Equal(0.04f, withReg - noReg, 3);
        v.Data[1] -= 2f;

        var optimizer = new Training.AdamWOptimizer([new Training.ParameterGroup([.. model.TrainableParameters()])]);
        float first = 0, last = 0;
        for (int step = 0; step < 15; step++)
        {
            model.ZeroGrad();
            var loss = model.Loss(TinyLlama.Inputs, TinyLlama.Labels);
            (first, last) = (step == 0 ? loss.Item() : first, loss.Item());
            Tape.Backward(loss);
            optimizer.Step(1e-2);
        }

        Assert.Equal(baseLoss, first, 4);
        Assert.True(last < first - 0.1f, $"fusion training: loss {first} → {last}");
    }

    [Fact]
    public void ParallelReplicatesTheBatchOncePerAdapter()
    {
        var (model, set) = TwoAdapters();
        using var scope = Tape.NoGrad();
        int[] tokens = [.. TinyLlama.Inputs, .. TinyLlama.Labels];
        set.ActiveSetup = "a";
        var alone = model.Forward(tokens, batch: 2).Data;
        set.ActiveSetup = AdapterSetup.Stack("b");
        var bAlone = model.Forward(tokens, batch: 2).Data;
        set.ActiveSetup = AdapterSetup.Parallel("a", "b");
        Assert.Throws<InvalidOperationException>(() => model.Forward(tokens, batch: 2));
        var both = set.ForwardParallel(tokens, batch: 2).Data;
        Assert.Equal(alone.Length * 2, both.Length);
        TestUtil.AssertClose(both.AsSpan(0, alone.Length).ToArray(), alone, 1e-5, 1e-5, "replica 0 = a");
        TestUtil.AssertClose(both.AsSpan(alone.Length).ToArray(), bAlone, 1e-5, 1e-5, "replica 1 = b");
    }

    [Fact]
    public void ThePerRowSwitchRunsEachSequenceWithItsOwnSetup()
    {
        var (model, set) = TwoAdapters();
        set.RegisterSetup("ab", AdapterSetup.Stack("a", "b"));
        using var scope = Tape.NoGrad();
        string[] names = ["b", ForwardContext.BaseAdapterName, "ab", "lora-elsewhere"];
        int t = TinyLlama.Inputs.Length, vocab = model.Config.VocabSize;
        int[] tokens = [.. Enumerable.Repeat(TinyLlama.Inputs, 4).SelectMany(s => s)];
        var batched = model.Forward(tokens, 4, null, new ForwardContext { AdapterNames = names }).Data;
        var setups = new AdapterSetup?[] { "b", null, AdapterSetup.Stack("a", "b"), null };
        for (int row = 0; row < 4; row++)
        {
            set.ActiveSetup = setups[row];
            var alone = model.Forward(TinyLlama.Inputs).Data;
            TestUtil.AssertClose(batched.AsSpan(row * t * vocab, t * vocab).ToArray(), alone, 1e-5, 1e-5, $"row {row} ({names[row]})");
        }
    }

    [Fact]
    public void SetupsNamingMissingAdaptersOrFusionsAreRefused()
    {
        var (_, set) = TwoAdapters();
        Assert.Contains("'c'", Assert.Throws<ArgumentException>(() => set.ActiveSetup = AdapterSetup.Stack("a", "c")).Message);
        Assert.Contains("AddFusion", Assert.Throws<ArgumentException>(() => set.ActiveSetup = AdapterSetup.Fuse("a", "b")).Message);
        Assert.Throws<ArgumentException>(() => AdapterSetup.Stack(AdapterSetup.Stack("a")));
        Assert.Throws<ArgumentException>(() => AdapterSetup.Fuse(AdapterSetup.Parallel("a", "b")));
        Assert.Throws<ArgumentException>(() => AdapterSetup.Average([1, -1], "a", "b"));
    }
}
