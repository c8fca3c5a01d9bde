// The pooled temporaries of MixLoRA's host path (docs/formats/mixlora.md#cost):
//   ScratchArrays                                 exact lengths; a returned array comes back; a second return is refused;
//                                                 arrays below the large-object threshold are never pooled
//   GatherRowsScratch, RoutedSumScratch,          = GatherRows, RoutedSum, SegmentedLoraBranchGathered bit for bit (output and
//   SegmentedLoraBranchGatheredScratch              every gradient) over three steps at sizes that use the pool, the output's
//                                                 storage back in the pool after the backward; gradients by central
//                                                 finite differences (small sizes); with sourceTakesGrad (a non-leaf
//                                                 source's storage takes its gradient) the same gradients, and a leaf
//                                                 source's values are left alone
//   a whole MixLoRA layer at a pooled size        three steps from an empty pool give the same bits (a reused buffer that
//                                                 were still read would change the later steps), forward = the dense reference
using PeftKernels.Autograd;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Ops;
using PeftKernels.Peft;
using Xunit;
using LoraFactors = PeftKernels.Ops.LoraFactors;

namespace PeftKernels.Tests;

public class MixLoraScratchTests
{
    private static Parameter Leaf(int seed, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed), shape, trainable: true);

    [Fact]
    public void ScratchArraysReuseExactLengthsAndRefuseASecondReturn()
    {
        int length = ScratchArrays.MinLength + 4_099; // a length no other test uses
        var a = ScratchArrays.Rent(length);
        Assert.Equal(length, a.Length);
        ScratchArrays.Return(a);
        var b = ScratchArrays.Rent(length);
        Assert.Same(a, b);
        ScratchArrays.Return(b);
        var e = Assert.Throws<InvalidOperationException>(() => ScratchArrays.Return(b));
        Assert.Contains("returned twice", e.Message, StringComparison.Ordinal);
        Assert.Same(b, ScratchArrays.Rent(length));

        var small = ScratchArrays.Rent(ScratchArrays.MinLength - 1);
        ScratchArrays.Return(small);
        Assert.NotSame(small, ScratchArrays.Rent(ScratchArrays.MinLength - 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ScratchArrays.Rent(-1));
    }

    [Fact]
    public void GatherRowsScratchEqualsGatherRowsOverSteps()
    {
        int n = 40, cols = 907;
        int[] rows = [.. Enumerable.Range(0, 61).Select(j => ((j * 7) + 3) % n)];
        var x = Leaf(1, n, cols);
        var dy = TestUtil.Random(rows.Length * cols, 2);
        var y = Functional.GatherRows(x, rows);
        Tape.Backward(y, dy);
        var (yRef, dxRef) = ((float[])y.Data.Clone(), x.Grad!);
        for (int step = 0; step < 3; step++)
        {
            x.Grad = null;
            var ys = Functional.GatherRowsScratch(x, rows);
            Assert.Equal(yRef, ys.Data);
            Tape.Backward(ys, dy);
            Assert.Equal(dxRef, x.Grad);
            AssertBackInThePool(ys.Data);
        }

        var xs = Leaf(3, 5, 4);
        AutogradTests.Check(() => Functional.GatherRowsScratch(xs, [4, 1, 1, 0, 2, 4]), ("x", xs));
    }

    [Fact]
    public void RoutedSumScratchEqualsRoutedSumOverSteps()
    {
        int n = 30, c = 1000, k = 2;
        int[] rows = [.. Enumerable.Range(0, 50).Select(i => (i * 11) % n)];
        int[] slots = [.. Enumerable.Range(0, 50).Select(i => i % k)];
        var part = Leaf(4, rows.Length, c);
        var w = Leaf(5, n, k);
        var dy = TestUtil.Random(n * c, 6);
        var y = Functional.RoutedSum([part], [rows], [slots], w, n);
        Tape.Backward(y, dy);
        var (yRef, dpRef, dwRef) = ((float[])y.Data.Clone(), part.Grad!, w.Grad!);
        for (int step = 0; step < 3; step++)
        {
            (part.Grad, w.Grad) = (null, null);
            var ys = Functional.RoutedSumScratch([part], [rows], [slots], w, n);
            Assert.Equal(yRef, ys.Data);
            Tape.Backward(ys, dy);
            Assert.Equal(dpRef, part.Grad);
            Assert.Equal(dwRef, w.Grad);
            AssertBackInThePool(ys.Data);
        }

        var ps = Leaf(7, 6, 5);
        var ws = Leaf(8, 4, 2);
        AutogradTests.Check(() => Functional.RoutedSumScratch([ps], [[0, 1, 1, 2, 3, 3]], [[0, 0, 1, 1, 0, 1]], ws, 4), ("part", ps), ("w", ws));
    }

    [Fact]
    public void SegmentedLoraBranchGatheredScratchEqualsTheGatheredOpOverSteps()
    {
        int inF = 37, outF = 700, n = 48, sourceRows = 29;
        int[] starts = [0, 5, 5, 30, 48];
        int[] rows = [.. Enumerable.Range(0, n).Select(i => ((i * 7) + 3) % sourceRows)];
        var source = Leaf(9, sourceRows, outF);
        var x = Leaf(10, n, inF);
        var adapters = Enumerable.Range(0, 4).Select(t => new LoraFactors(Leaf(20 + t, 3, inF), Leaf(30 + t, outF, 3), 0.5f + t, Name: $"e{t}")).ToArray();
        var dy = TestUtil.Random(n * outF, 11);
        var leaves = new List<Parameter> { source, x };
        leaves.AddRange(adapters.SelectMany(l => new[] { l.A, l.B }).Cast<Parameter>());
        var y = Functional.SegmentedLoraBranchGathered(source, rows, x, adapters, starts, 0f, null);
        Tape.Backward(y, dy);
        var yRef = (float[])y.Data.Clone();
        var grads = leaves.Select(p => p.Grad).ToArray();
        for (int step = 0; step < 3; step++)
        {
            leaves.ForEach(p => p.Grad = null);
            var ys = Functional.SegmentedLoraBranchGatheredScratch(source, rows, x, adapters, starts, 0f, null);
            Assert.Equal(yRef, ys.Data);
            Tape.Backward(ys, dy);
            for (int i = 0; i < leaves.Count; i++)
            {
                Assert.Equal(grads[i], leaves[i].Grad);
            }

            AssertBackInThePool(ys.Data);
        }

        var src = Leaf(12, 4, 5);
        var xs = Leaf(13, 6, 3);
        var small = new[] { new LoraFactors(Leaf(14, 2, 3), Leaf(15, 5, 2), 0.7f), new LoraFactors(Leaf(16, 1, 3), Leaf(17, 5, 1), 1.3f) };
        AutogradTests.Check(() => Functional.SegmentedLoraBranchGatheredScratch(src, [3, 0, 0, 2, 1, 3], xs, small, [0, 2, 6], 0f, null),
            ("source", src), ("x", xs), ("a.A", (Parameter)small[0].A), ("b.B", (Parameter)small[1].B));
    }

    [Fact]
    public void ASourceThatTakesItsGradientGivesTheSameGradients()
    {
        int n = 30, cols = 800, inF = 9;
        int[] rows = [.. Enumerable.Range(0, 44).Select(j => ((j * 7) + 3) % n)];
        int[] starts = [0, 20, 44];
        var p = Leaf(40, n, cols);
        var f = TestUtil.Random(n * cols, 41, 2f);
        var x = Leaf(42, rows.Length, inF);
        var adapters = new[] { new LoraFactors(Leaf(43, 2, inF), Leaf(44, cols, 2), 0.6f), new LoraFactors(Leaf(45, 3, inF), Leaf(46, cols, 3), 1.1f) };
        var dy = TestUtil.Random(rows.Length * cols, 47);
        var ops = new (string Name, Func<Tensor, bool, Tensor> Op)[]
        {
            ("gather", (src, into) => into ? Functional.GatherRowsScratch(src, rows, sourceTakesGrad: true) : Functional.GatherRows(src, rows)),
            ("segmented", (src, into) => into ? Functional.SegmentedLoraBranchGatheredScratch(src, rows, x, adapters, starts, 0f, null, sourceTakesGrad: true)
                : Functional.SegmentedLoraBranchGathered(src, rows, x, adapters, starts, 0f, null)),
        };
        foreach (var (name, op) in ops)
        {
            p.Grad = null;
            Tape.Backward(op(Functional.ScaleElements(p, f), false), dy);
            var expected = p.Grad!;
            for (int step = 0; step < 2; step++)
            {
                p.Grad = null;
                Tape.Backward(op(Functional.ScaleElements(p, f), true), dy); // the scaled source's storage takes its gradient
                Assert.True(expected.SequenceEqual(p.Grad!), $"{name}: the source's gradient differs at step {step}");
            }

            var before = (float[])p.Data.Clone();
            p.Grad = null;
            Tape.Backward(op(p, true), dy); // a leaf source keeps its values (its gradient goes to a fresh buffer)
            Assert.Equal(before, p.Data);
            Assert.True(expected.Zip(f).Select(e => e.First / e.Second).Zip(p.Grad!).All(q => Math.Abs(q.First - q.Second) <= 1e-4 * (1 + Math.Abs(q.Second))), name);
        }

        var small = Leaf(48, 4, 5);
        var fs = TestUtil.Random(20, 49, 2f);
        AutogradTests.Check(() => Functional.GatherRowsScratch(Functional.ScaleElements(small, fs), [3, 0, 0, 2, 1, 3], sourceTakesGrad: true), ("source", small));
    }

    [Fact]
    public void AMixLoraLayerAtAPooledSizeGivesTheSameBitsEveryStep()
    {
        const int n = 96, hidden = 128, inter = 256, experts = 8, topK = 2, rank = 4;
        Linear Frozen(int outF, int inF, int s) => new(new Parameter(TestUtil.Random(outF * inF, s, 0.2f), [outF, inF]));
        var mlp = new LlamaMlp(Frozen(inter, hidden, 1), Frozen(inter, hidden, 2), Frozen(hidden, inter, 3));
        var config = new MixLoraConfig { NumExperts = experts, TopK = topK, R = rank, LoraAlpha = 8, LoraDropout = 0, TargetModules = ["gate_proj", "up_proj", "down_proj"] };
        var block = MixLoraBlock.Create(mlp, config, 0, seed: 5);
        int seed = 40;
        foreach (var (name, p) in block.NamedParameters().Where(p => p.Name.Contains("lora_B", StringComparison.Ordinal) || p.Name.StartsWith("moe_gate", StringComparison.Ordinal)))
        {
            TestUtil.Random(p.Data.Length, seed++, 0.5f).CopyTo(p.Data, 0);
        }

        var x = new Parameter(TestUtil.Random(n * hidden, 6), [n, hidden], trainable: true);
        var dy = TestUtil.Random(n * hidden, 7);
        var leaves = new List<(string Name, Parameter P)> { ("x", x) };
        leaves.AddRange(block.NamedParameters());
        ScratchArrays.Clear();
        float[]? y0 = null;
        float[]?[]? g0 = null;
        for (int step = 0; step < 3; step++)
        {
            leaves.ForEach(l => l.P.Grad = null);
            var y = block.Forward(mlp, x, ForwardContext.Default);
            var values = (float[])y.Data.Clone();
            Tape.Backward(y, dy);
            var grads = leaves.Select(l => l.P.Grad).ToArray();
            Assert.All(leaves.Where(l => !l.Name.Contains(".experts.", StringComparison.Ordinal)), l => Assert.NotNull(l.P.Grad));
            if (step == 0)
            {
                (y0, g0) = (values, grads);
                continue;
            }

            Assert.Equal(y0, values);
            for (int i = 0; i < leaves.Count; i++)
            {
                Assert.True(g0![i] == null ? grads[i] == null : grads[i] != null && g0[i]!.SequenceEqual(grads[i]!), $"{leaves[i].Name} differs at step {step}");
            }
        }

        Assert.True(ScratchArrays.HeldBytes > 0, "the layer's temporaries should be back in the pool");
        double[] D(Parameter p) => TestUtil.ToDouble(p.Data);
        var refs = Enumerable.Range(0, experts).Select(e => new MixLoraReference.Expert(D(block.Expert("gate_proj", e)!.A), D(block.Expert("gate_proj", e)!.B),
            D(block.Expert("up_proj", e)!.A), D(block.Expert("up_proj", e)!.B), D(block.Expert("down_proj", e)!.A), D(block.Expert("down_proj", e)!.B))).ToList();
        var expected = MixLoraReference.Forward(D(x), D(mlp.GateProj.Weight), D(mlp.UpProj.Weight), D(mlp.DownProj.Weight), D(block.Router), refs,
            config.Scale, n, hidden, inter, rank, topK);
        TestUtil.AssertClose(y0!, expected, 1e-4, 1e-3, "forward");
    }

    /// <summary>After an op's backward its output's storage is in the pool: two rents of that length give it back (unique lengths here).</summary>
    private static void AssertBackInThePool(float[] storage)
    {
        var a = ScratchArrays.Rent(storage.Length);
        var b = ScratchArrays.Rent(storage.Length);
        Assert.True(ReferenceEquals(a, storage) || ReferenceEquals(b, storage), "the output's storage was not returned to the pool");
        ScratchArrays.Return(a);
        ScratchArrays.Return(b);
    }
}
