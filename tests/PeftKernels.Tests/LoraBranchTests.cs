using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using Xunit;
using Embedding = PeftKernels.Nn.Embedding;

namespace PeftKernels.Tests;

/// <summary>Several active adapters, per-row adapters, lora_bias, LoRA-FA and embedding LoRA at the layer level.</summary>
public class LoraBranchTests
{
    private const int In = 64;
    private const int Out = 9;

    private static Parameter Weight(TensorDType storage)
    {
        var values = TestUtil.Random(Out * In, 17);
        return storage switch
        {
            TensorDType.F32 => new Parameter(values, [Out, In]),
            TensorDType.BF16 => new Parameter(values.Select(Bf16.FromSingle).ToArray(), [Out, In]),
            _ => new Parameter(QuantizedWeight.Quantize(values, [Out, In], Quant4Type.Nf4, 64, true)),
        };
    }

    /// <summary>A Linear with adapters a (r 4), b (r 2, lora_bias) and c (r 3, rsLoRA), all with non-zero B.</summary>
    private static Linear ThreeAdapters(TensorDType storage, float dropout = 0f)
    {
        var linear = new Linear(Weight(storage), new Parameter(TestUtil.Random(Out, 18), [Out]));
        var specs = new[] { ("a", 4, false, false), ("b", 2, true, false), ("c", 3, false, true) };
        foreach (var (name, r, loraBias, rslora) in specs)
        {
            var adapter = new LoraAdapter(name, In, Out, r, 2.0 * r + 1, dropout, rslora, (ulong)r, loraBias: loraBias);
            TestUtil.Random(adapter.B.Data.Length, r + 30, 0.5f).CopyTo(adapter.B.Data, 0);
            if (adapter.Bias != null)
            {
                TestUtil.Random(Out, 40).CopyTo(adapter.Bias.Data, 0);
            }

            linear.AddAdapter(adapter);
        }

        return linear;
    }

    /// <summary>x·Wᵀ + b + Σ s·((x·Aᵀ)·Bᵀ + bias_B) over the named adapters, in double.</summary>
    private static double[] Reference(Linear linear, float[] x, int n, params string[] names)
    {
        var w = linear.Weight.ToFloat32();
        var y = new double[n * Out];
        for (int t = 0; t < n; t++)
        {
            for (int o = 0; o < Out; o++)
            {
                double s = linear.Bias!.Data[o];
                for (int i = 0; i < In; i++)
                {
                    s += (double)x[(t * In) + i] * w[(o * In) + i];
                }

                foreach (var a in linear.Adapters.Where(a => names.Contains(a.Name)))
                {
                    double branch = a.Bias?.Data[o] ?? 0;
                    for (int k = 0; k < a.Rank; k++)
                    {
                        double h = 0;
                        for (int i = 0; i < In; i++)
                        {
                            h += (double)x[(t * In) + i] * a.A.Data[(k * In) + i];
                        }

                        branch += h * a.B.Data[(o * a.Rank) + k];
                    }

                    s += a.Scale * branch;
                }

                y[(t * Out) + o] = s;
            }
        }

        return y;
    }

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    [InlineData(TensorDType.Q4)]
    public void SeveralActiveAdaptersAddTheirBranches(TensorDType storage)
    {
        var linear = ThreeAdapters(storage);
        var x = TestUtil.Random(5 * In, 19);
        linear.SetActiveAdapters("a", "b");
        var expected = Reference(linear, x, 5, "a", "b");

        // fp32 sums of ≤ 64 + r products of magnitude ≤ 1 (bf16 and 4-bit weights are exact once
        // widened, and the reference reads the same widened values): 1e-5 of the output range.
        double range = expected.Max(Math.Abs);
        TestUtil.AssertClose(linear.Forward(new Tensor(x, 5, In)).Data, expected, 1e-5 * range, 1e-5, $"a + b over {storage}");
        linear.SetActiveAdapters("c", "a", "b");
        TestUtil.AssertClose(linear.Forward(new Tensor(x, 5, In)).Data, Reference(linear, x, 5, "a", "b", "c"), 1e-5 * range, 1e-5, "c + a + b");
    }

    [Fact]
    public void SeveralActiveAdaptersWithDropoutPassTheGradientCheck()
    {
        var linear = ThreeAdapters(TensorDType.F32, dropout: 0.25f);
        linear.Train(true);
        linear.SetActiveAdapters("a", "b", "c");
        var x = new Parameter(TestUtil.Random(3 * In, 20), [3, In], trainable: true);
        var context = new ForwardContext(DropoutSeed: 5);
        var (a, b) = (linear.Adapters[0], linear.Adapters[1]);
        AutogradTests.Check(() => linear.Forward(x, context), ("x", x), ("a.A", a.A), ("a.B", a.B), ("b.A", b.A), ("b.B", b.B), ("b.bias", b.Bias!),
            ("c.A", linear.Adapters[2].A));

        // lora_bias on the fused (first) adapter rides in the kernel's bias argument.
        linear.SetActiveAdapters("b", "a");
        AutogradTests.Check(() => linear.Forward(x, context), ("x", x), ("b.B", b.B), ("b.bias", b.Bias!), ("base bias", MakeTrainable(linear.Bias!)));
    }

    private static Parameter MakeTrainable(Parameter p)
    {
        p.Trainable = true;
        return p;
    }

    [Fact]
    public void LoraFaFreezesAAndLeavesTheOtherGradientsAsTheyWere()
    {
        var linear = ThreeAdapters(TensorDType.F32);
        linear.SetActiveAdapters("a", "c");
        var x = new Parameter(TestUtil.Random(4 * In, 21), [4, In], trainable: true);
        var dy = TestUtil.Random(4 * Out, 22);
        Tape.Backward(linear.Forward(x), dy);
        float[][] withA = [x.Grad!, linear.Adapters[0].B.Grad!, linear.Adapters[2].B.Grad!];
        linear.ZeroGrad();
        x.Grad = null;
        foreach (var adapter in linear.Adapters)
        {
            adapter.A.Trainable = false;
        }

        Tape.Backward(linear.Forward(x), dy);
        Assert.Null(linear.Adapters[0].A.Grad);
        Assert.Null(linear.Adapters[2].A.Grad);
        Assert.Equal(withA, [x.Grad!, linear.Adapters[0].B.Grad!, linear.Adapters[2].B.Grad!]);
    }

    [Fact]
    public void PerRowAdaptersEqualEachSequenceAlone()
    {
        var linear = ThreeAdapters(TensorDType.F32);
        string[] names = ["a", ForwardContext.BaseAdapterName, "b", "a", "zzz"];
        const int rows = 3;
        var x = TestUtil.Random(names.Length * rows * In, 23);
        var mixed = linear.Forward(new Tensor(x, names.Length * rows, In), new ForwardContext { AdapterNames = names }).Data;
        for (int s = 0; s < names.Length; s++)
        {
            // "zzz" is no adapter of this layer: those rows are plain base rows, as "__base__".
            linear.SetActiveAdapters(names[s]);
            var alone = linear.Forward(new Tensor(x[(s * rows * In)..((s + 1) * rows * In)], rows, In)).Data;
            TestUtil.AssertClose(mixed.AsSpan(s * rows * Out, rows * Out), alone, 1e-5, 1e-5, $"sequence {s} ({names[s]})");
        }

        var p = Assert.Throws<ArgumentException>(() => linear.Forward(new Tensor(x[..(4 * In)], 4, In), new ForwardContext { AdapterNames = ["a", "b", "c"] }));
        Assert.Contains("3 per-row adapter names for 4 rows", p.Message);
    }

    [Fact]
    public void PerRowAdaptersPassTheGradientCheck()
    {
        var linear = ThreeAdapters(TensorDType.F32, dropout: 0.2f);
        linear.Train(true);
        var x = new Parameter(TestUtil.Random(4 * In, 24), [4, In], trainable: true);
        var context = new ForwardContext(DropoutSeed: 3) { AdapterNames = ["b", "a", ForwardContext.BaseAdapterName, "b"] };
        var (a, b) = (linear.Adapters[0], linear.Adapters[1]);
        AutogradTests.Check(() => linear.Forward(x, context), ("x", x), ("a.A", a.A), ("a.B", a.B), ("b.A", b.A), ("b.B", b.B), ("b.bias", b.Bias!));
        Assert.Null(linear.Adapters[2].B.Grad);
    }

    [Fact]
    public void EmbeddingLoraAddsScaledColumnsOfAAndStartsAtTheBase()
    {
        var table = new Parameter(TestUtil.Random(11 * 6, 25), [11, 6]);
        var embedding = new Embedding(table);
        int[] ids = [3, 0, 3, 10];
        var baseRows = embedding.Forward(ids).Data;
        var first = LoraAdapter.ForEmbedding("e1", 11, 6, 2, 4, false, 1);
        var second = LoraAdapter.ForEmbedding("e2", 11, 6, 3, 3, true, 2);
        embedding.AddAdapter(first);
        embedding.AddAdapter(second);
        embedding.SetActiveAdapters("e1", "e2");
        Assert.All(first.A.Data, v => Assert.Equal(0f, v));
        Assert.Contains(first.B.Data, v => v != 0f);
        Assert.Equal(baseRows, embedding.Forward(ids).Data);

        TestUtil.Random(first.A.Data.Length, 26).CopyTo(first.A.Data, 0);
        TestUtil.Random(second.A.Data.Length, 27).CopyTo(second.A.Data, 0);
        var expected = new double[ids.Length * 6];
        for (int t = 0; t < ids.Length; t++)
        {
            for (int j = 0; j < 6; j++)
            {
                double sum = table.Data[(ids[t] * 6) + j];
                foreach (var a in new[] { first, second })
                {
                    for (int k = 0; k < a.Rank; k++)
                    {
                        sum += a.Scale * a.A.Data[(k * 11) + ids[t]] * (double)a.B.Data[(j * a.Rank) + k];
                    }
                }

                expected[(t * 6) + j] = sum;
            }
        }

        // Sums of ≤ 3 products per adapter: fp32 rounding only.
        TestUtil.AssertClose(embedding.Forward(ids).Data, expected, 1e-6, 1e-6, "embedding + two LoRA branches");
        AutogradTests.Check(() => embedding.Forward(ids), ("e1.A", first.A), ("e1.B", first.B), ("e2.A", second.A), ("e2.B", second.B));

        var perRow = embedding.Forward(ids, new ForwardContext { AdapterNames = ["e2", ForwardContext.BaseAdapterName] }).Data;
        embedding.SetActiveAdapters("e2");
        Assert.Equal(embedding.Forward(ids[..2]).Data, perRow[..12]);
        Assert.Equal(baseRows[12..], perRow[12..]);
    }

    [Fact]
    public void MergedOrMismatchedAdaptersAreRefused()
    {
        var linear = ThreeAdapters(TensorDType.F32);
        var e = Assert.Throws<ArgumentException>(() => linear.AddAdapter(new LoraAdapter("d", In + 1, Out, 2, 2, 0, false, 0)));
        Assert.Contains("needs A [r, 64] and B [9, r]", e.Message);
        linear.MarkMerged("a", true);
        var merged = Assert.Throws<InvalidOperationException>(() => linear.RemoveAdapter("a"));
        Assert.Contains("'a' is merged", merged.Message);
        Assert.Throws<InvalidOperationException>(() => linear.Forward(new Tensor(new float[In], 1, In), new ForwardContext { AdapterNames = ["b"] }));
    }
}
