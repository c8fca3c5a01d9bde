using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Every autograd op against central finite differences. The ops run in fp32, so the checked
/// quantity is L = Σ R ⊙ op(inputs) accumulated in double, differentiated numerically with a
/// step of 1e-2 (truncation error O(ε²) ≈ 1e-4 for these smooth ops; fp32 rounding of L
/// divided by 2ε adds ≈ 1e-4). Tolerance 2e-3 + 2e-2·|g| covers both with margin and still
/// catches a missing term, a wrong sign or a wrong scale (errors of order |g|).
/// </summary>
public class AutogradTests
{
    internal const float Eps = 1e-2f;

    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    /// <summary>Backward once with dL/dout = R, then compare every input element's Grad with (L(θ+ε) − L(θ−ε)) / 2ε.</summary>
    internal static void Check(Func<Tensor> forward, params (string Name, Parameter P)[] inputs)
    {
        var output = forward();
        var r = TestUtil.Random((int)output.Count, 99);
        Tape.Backward(output, r);
        foreach (var (name, p) in inputs)
        {
            Assert.NotNull(p.Grad);
            var analytic = (float[])p.Grad!.Clone();
            for (int i = 0; i < p.Data.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(p.Data, i, Eps, () =>
                {
                    using var scope = Tape.NoGrad();
                    var y = forward().Data;
                    double s = 0;
                    for (int j = 0; j < y.Length; j++)
                    {
                        s += (double)y[j] * r[j];
                    }

                    return s;
                });
                double diff = Math.Abs(analytic[i] - numeric);
                Assert.True(diff <= 2e-3 + (2e-2 * Math.Abs(numeric)), $"{name}[{i}]: backward {analytic[i]}, finite difference {numeric}");
            }

            p.Grad = null;
        }
    }

    [Fact]
    public void EmbeddingGradientScattersIntoRows()
    {
        var w = Leaf(1, 1f, 7, 5);
        int[] ids = [3, 0, 3, 6];
        Check(() => Functional.Embedding(ids, w), ("weight", w));
    }

    [Fact]
    public void RmsNormGradients()
    {
        var x = Leaf(2, 1f, 3, 17);
        var w = Leaf(3, 1f, 17);
        Check(() => Functional.RmsNorm(x, w, 1e-5f), ("x", x), ("weight", w));
    }

    [Fact]
    public void RopeGradient()
    {
        var x = Leaf(4, 1f, 3, 2 * 6);
        int[] positions = [0, 5, 11];
        var invFreq = Kernels.Cpu.Rope.InverseFrequencies(6, 10000);
        Check(() => Functional.Rope(x, positions, invFreq, 2, 6), ("x", x));
    }

    [Fact]
    public void SwiGluAndAddGradients()
    {
        var g = Leaf(5, 3f, 2, 9);
        var u = Leaf(6, 1f, 2, 9);
        Check(() => Functional.SwiGlu(g, u), ("gate", g), ("up", u));
        Check(() => Functional.Add(g, u), ("a", g), ("b", u));
        Check(() => Functional.Add(g, g), ("a = b", g));
    }

    [Fact]
    public void AttentionGradientsWithGroupedHeads()
    {
        int batch = 2, t = 5, heads = 4, kvHeads = 2, hd = 3;
        var q = Leaf(7, 1f, batch * t, heads * hd);
        var k = Leaf(8, 1f, batch * t, kvHeads * hd);
        var v = Leaf(9, 1f, batch * t, kvHeads * hd);
        Check(() => Functional.Attention(q, k, v, batch, heads, kvHeads, hd), ("q", q), ("k", k), ("v", v));
    }

    [Fact]
    public void CrossEntropyGradientIgnoresMaskedRows()
    {
        var logits = Leaf(10, 3f, 4, 11);
        int[] labels = [2, Functional.IgnoreIndex, 10, 0];
        Check(() => Functional.CrossEntropy(logits, labels), ("logits", logits));
        var loss = Functional.CrossEntropy(logits, labels);
        loss.Backward();
        Assert.All(logits.Grad!.AsSpan(11, 11).ToArray(), gv => Assert.Equal(0f, gv));
    }

    [Fact]
    public void CrossEntropyConsumingLogitsGivesTheSameGradient()
    {
        var w = Leaf(11, 1f, 13, 6);
        var x = Leaf(12, 1f, 3, 6);
        int[] labels = [1, 12, 5];
        var expected = new float[w.Count];
        foreach (bool consume in new[] { false, true })
        {
            var loss = Functional.CrossEntropy(new Linear(w).Forward(x), labels, consume);
            loss.Backward();
            if (!consume)
            {
                w.Grad!.CopyTo(expected, 0);
            }
            else
            {
                Assert.Equal(expected, w.Grad!);
            }

            w.Grad = null;
            x.Grad = null;
        }
    }

    [Fact]
    public void LinearGradientsForTrainableWeightAndBias()
    {
        var x = Leaf(13, 1f, 3, 7);
        var w = Leaf(14, 1f, 5, 7);
        var b = Leaf(15, 1f, 5);
        var linear = new Linear(w, b);
        Check(() => linear.Forward(x), ("x", x), ("weight", w), ("bias", b));
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    [InlineData(TensorDType.F16)]
    [InlineData(TensorDType.Q4)]
    public void LoraLinearGradientsOverEveryBaseStorage(TensorDType storage)
    {
        var x = Leaf(16, 1f, 3, 64);
        var wValues = TestUtil.Random(9 * 64, 17);
        Parameter w = storage switch
        {
            TensorDType.F32 => new Parameter(wValues, [9, 64]),
            TensorDType.BF16 => new Parameter(wValues.Select(Bf16.FromSingle).ToArray(), [9, 64]),
            TensorDType.F16 => new Parameter(wValues.Select(v => (Half)v).ToArray(), [9, 64]),
            _ => new Parameter(QuantizedWeight.Quantize(wValues, [9, 64], Quant4Type.Nf4, 64, true)),
        };
        var linear = new Linear(w, new Parameter(TestUtil.Random(9, 18), [9]));
        var adapter = new LoraAdapter("default", 64, 9, 4, 8, 0f, false, 3);
        adapter.B.Data.AsSpan().Fill(0.3f);
        linear.AddAdapter(adapter);
        Check(() => linear.Forward(x), ("x", x), ("lora_A", adapter.A), ("lora_B", adapter.B));
    }

    [Fact]
    public void FrozenBaseWithoutAdapterStillPassesTheInputGradient()
    {
        var x = Leaf(19, 1f, 2, 64);
        var wq = new Parameter(QuantizedWeight.Quantize(TestUtil.Random(5 * 64, 20), [5, 64], Quant4Type.Fp4, 32, false));
        var linear = new Linear(wq);
        Check(() => linear.Forward(x), ("x", x));
        Assert.Null(wq.Grad);
    }

    [Fact]
    public void NoGradScopeRecordsNothingAndAllocatesNoTape()
    {
        bool allocated = true;
        int count = -1;
        bool requiresGrad = true;
        var thread = new Thread(() =>
        {
            var w = Leaf(21, 1f, 4, 8);
            var x = Leaf(22, 1f, 2, 8);
            using (Tape.NoGrad())
            {
                var y = Functional.SwiGlu(new Linear(w).Forward(x), new Linear(w).Forward(x));
                requiresGrad = y.RequiresGrad;
            }

            allocated = Tape.IsAllocated;
            count = Tape.Count;
        });
        thread.Start();
        thread.Join();
        Assert.False(allocated);
        Assert.Equal(0, count);
        Assert.False(requiresGrad);
    }

    [Fact]
    public void BackwardFreesTheTapeAndAccumulatesParameterGradients()
    {
        var w = Leaf(23, 1f, 4, 8);
        var x = new Tensor(TestUtil.Random(16, 24), 2, 8);
        int[] labels = [1, 3];
        Functional.CrossEntropy(new Linear(w).Forward(x), labels).Backward();
        Assert.Equal(0, Tape.Count);
        var once = (float[])w.Grad!.Clone();
        Functional.CrossEntropy(new Linear(w).Forward(x), labels).Backward();
        for (int i = 0; i < once.Length; i++)
        {
            Assert.Equal(2 * once[i], w.Grad![i], 6);
        }

        Assert.Null(x.Grad);
    }
}
