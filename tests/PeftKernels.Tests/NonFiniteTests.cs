using PeftKernels.Kernels.Cpu;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Non-finite inputs propagate as in PyTorch: one NaN (or +Inf) in one input element makes every output element that
/// depends on it non-finite, for every CPU op, its backward where cheap, and the kernels with their own reductions, on
/// each SIMD path. Under the causal mask a NaN key or value at a future position must not reach earlier queries.
/// </summary>
public class NonFiniteTests
{
    public static TheoryData<SimdPath> Paths() => new(TestUtil.Paths);

    public static TheoryData<SimdPath, float> PathsAndPoisons()
    {
        var data = new TheoryData<SimdPath, float>();
        foreach (var path in TestUtil.Paths)
        {
            data.Add(path, float.NaN);
            data.Add(path, float.PositiveInfinity);
        }

        return data;
    }

    public static TheoryData<SimdPath, string> PathsAndGemmWeights()
    {
        var data = new TheoryData<SimdPath, string>();
        foreach (var path in TestUtil.Paths)
        {
            foreach (string format in new[] { "f32", "bf16", "f16", "nf4" })
            {
                data.Add(path, format);
            }
        }

        return data;
    }

    internal static float[] With(float[] values, int index, float poison)
    {
        values[index] = poison;
        return values;
    }

    internal static void AssertNaN(float[] y, IEnumerable<int> indices, string what)
    {
        foreach (int i in indices)
        {
            Assert.True(float.IsNaN(y[i]), $"{what}: element {i} is {y[i]}, expected NaN");
        }
    }

    internal static void AssertFinite(float[] y, IEnumerable<int> indices, string what)
    {
        foreach (int i in indices)
        {
            Assert.True(float.IsFinite(y[i]), $"{what}: element {i} is {y[i]}, expected finite");
        }
    }

    internal static IEnumerable<int> Row(int row, int columns) => Enumerable.Range(row * columns, columns);

    internal static IEnumerable<int> Column(int column, int rows, int columns) => Enumerable.Range(0, rows).Select(r => (r * columns) + column);

    [Fact]
    public void EmbeddingCopiesANaNRowToEveryLookup()
    {
        var table = With(TestUtil.Random(5 * 4, 1), (2 * 4) + 1, float.NaN);
        var y = Functional.Embedding([0, 2, 2], new Tensor(table, 5, 4)).Data;
        AssertNaN(y, [5, 9], "embedding");
        AssertFinite(y, Row(0, 4), "embedding row 0");
    }

    [Theory]
    [MemberData(nameof(PathsAndPoisons))]
    public void RmsNormPropagatesFromXAndWeight(SimdPath path, float poison)
    {
        const int n = 3, dim = 37;
        var options = new KernelOptions(1, path);
        var w = TestUtil.Random(dim, 2);
        var y = Functional.RmsNorm(new Tensor(With(TestUtil.Random(n * dim, 1), dim + 5, poison), n, dim), new Tensor(w, dim), 1e-5f, options).Data;
        AssertNaN(y, float.IsNaN(poison) ? Row(1, dim) : [dim + 5], "rmsnorm x");
        AssertFinite(y, Row(0, dim), "rmsnorm row 0");

        var yw = Functional.RmsNorm(new Tensor(TestUtil.Random(n * dim, 1), n, dim), new Tensor(With(w, 5, float.NaN), dim), 1e-5f, options).Data;
        AssertNaN(yw, Column(5, n, dim), "rmsnorm weight");
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void ElementwiseOpsPropagate(SimdPath path)
    {
        var options = new KernelOptions(1, path);
        const int rows = 3, cols = 40;
        Tensor Poisoned(int seed) => new(With(TestUtil.Random(rows * cols, seed), cols + 7, float.NaN), rows, cols);
        Tensor Clean(int seed) => new(TestUtil.Random(rows * cols, seed), rows, cols);

        AssertNaN(Functional.Add(Poisoned(1), Clean(2)).Data, [cols + 7], "add a");
        AssertNaN(Functional.Add(Clean(1), Poisoned(2)).Data, [cols + 7], "add b");
        AssertNaN(Functional.SwiGlu(Poisoned(1), Clean(2), options).Data, [cols + 7], "swiglu gate");
        AssertNaN(Functional.SwiGlu(Clean(1), Poisoned(2), options).Data, [cols + 7], "swiglu up");
        AssertNaN(Functional.ScaleColumns(Poisoned(1), new Tensor(TestUtil.Random(cols, 3), cols), options).Data, [cols + 7], "ia3 x");
        var l = With(TestUtil.Random(cols, 3), 7, float.NaN);
        AssertNaN(Functional.ScaleColumns(Clean(1), new Tensor(l, cols), options).Data, Column(7, rows, cols), "ia3 scale");

        // Rope rotates pairs (i, i + headDim/2): both elements of the pair of the NaN become NaN.
        var invFreq = Enumerable.Range(0, 10).Select(i => MathF.Pow(10000f, -i / 10f)).ToArray();
        var rope = Functional.Rope(Poisoned(1), [0, 1, 2], invFreq, heads: 2, headDim: 20, options).Data;
        AssertNaN(rope, [cols + 7, cols + 17], "rope");
        AssertFinite(rope, Row(0, cols), "rope row 0");
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void CrossEntropyOpGivesANaNLoss(float poison)
    {
        var logits = new Tensor(With(TestUtil.Random(3 * 50, 1), 50 + 7, poison), 3, 50);
        Assert.True(float.IsNaN(Functional.CrossEntropy(logits, [1, 2, 3]).Item()));
    }

    [Theory]
    [MemberData(nameof(PathsAndPoisons))]
    public void CrossEntropyKernelRowLseIsNaN(SimdPath path, float poison)
    {
        foreach (int vocab in new[] { 50, 5000, 9000 })
        {
            foreach (int at in new[] { 0, vocab / 2, vocab - 1 })
            {
                var logits = With(TestUtil.Random(3 * vocab, vocab), vocab + at, poison);
                var lse = new float[3];
                double loss = CrossEntropy.Forward(logits, [1, 2, 3], lse, 3, vocab, new KernelOptions(1, path));
                string what = $"vocab {vocab} at {at} {path}";
                Assert.True(double.IsNaN(loss), $"{what}: loss {loss}");
                Assert.True(float.IsFinite(lse[0]) && float.IsFinite(lse[2]), what);
                Assert.False(float.IsFinite(lse[1]), $"{what}: lse {lse[1]}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndGemmWeights))]
    public void GemmPropagatesFromXAndWeight(SimdPath path, string format)
    {
        var options = new KernelOptions(1, path);
        const int k = 37, n = 5;
        foreach (int m in new[] { 1, 3, 40 })
        {
            var w = TestUtil.Random(n * k, 2);
            Tensor Weight(float[] values) => format switch
            {
                "f32" => new Tensor(values, n, k),
                "bf16" => new Tensor(values.Select(Kernels.Reference.Bf16Reference.FromSingle).ToArray(), n, k),
                "f16" => new Tensor(values.Select(v => (Half)v).ToArray(), n, k),
                _ => new Tensor(QuantizedWeight.Quantize(values, [n, k], Quant4Type.Nf4, 64, false)),
            };

            int row = m / 2;
            var y = Functional.Gemm(new Tensor(With(TestUtil.Random(m * k, 1), (row * k) + 4, float.NaN), m, k), Weight(w), null, options).Data;
            AssertNaN(y, Row(row, n), $"gemm x {format} m {m}");
            if (format != "nf4")
            {
                var yw = Functional.Gemm(new Tensor(TestUtil.Random(m * k, 1), m, k), Weight(With(w, (2 * k) + 4, float.NaN)), null, options).Data;
                AssertNaN(yw, Column(2, m, n), $"gemm weight {format} m {m}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void LoraMatmulAndBranchPropagateFromXAAndB(SimdPath path)
    {
        const int m = 3, k = 37, n = 6, r = 4;
        var options = new LoraOptions(Kernel: new KernelOptions(1, path));
        var w = new Tensor(TestUtil.Random(n * k, 2), n, k);
        foreach (string poisoned in new[] { "x", "A", "B" })
        {
            var x = new Tensor(poisoned == "x" ? With(TestUtil.Random(m * k, 1), k + 4, float.NaN) : TestUtil.Random(m * k, 1), m, k);
            var a = new Tensor(poisoned == "A" ? With(TestUtil.Random(r * k, 3), 4, float.NaN) : TestUtil.Random(r * k, 3), r, k);
            var b = new Tensor(poisoned == "B" ? With(TestUtil.Random(n * r, 4), 2 * r, float.NaN) : TestUtil.Random(n * r, 4), n, r);
            var factors = new LoraFactors(a, b, 0.5f);
            var expected = poisoned switch
            {
                "x" => Row(1, n),
                "A" => Enumerable.Range(0, m * n),
                _ => Column(2, m, n),
            };
            AssertNaN(Functional.LoraMatmul(x, w, null, factors, options).Data, expected, $"lora matmul {poisoned}");
            AssertNaN(Functional.LoraBranch(new Tensor(TestUtil.Random(m * n, 5), m, n), x, factors, null, options).Data, expected, $"lora branch {poisoned}");
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void AttentionNaNReachesOnlyTheQueriesThatSeeIt(SimdPath path)
    {
        const int heads = 2, headDim = 8;
        var options = new KernelOptions(1, path);
        foreach (int t in new[] { 3, 7, 70 })
        {
            int width = heads * headDim, kvWidth = headDim, at = t / 2;
            foreach (string poisoned in new[] { "q", "k", "v" })
            {
                var q = TestUtil.Random(t * width, 1);
                var kv = new[] { TestUtil.Random(t * kvWidth, 2), TestUtil.Random(t * kvWidth, 3) };
                if (poisoned == "q")
                {
                    q[(at * width) + 3] = float.NaN;
                }
                else
                {
                    kv[poisoned == "k" ? 0 : 1][(at * kvWidth) + 3] = float.NaN;
                }

                var o = Functional.Attention(new Tensor(q, t, width), new Tensor(kv[0], t, kvWidth), new Tensor(kv[1], t, kvWidth), 1, heads, 1, headDim, options).Data;
                string what = $"attention {poisoned} t {t} {path}";
                // Masked keys never contribute: a NaN key or value at a future position does not reach earlier queries.
                AssertFinite(o, Enumerable.Range(0, at * width), what + " earlier queries");

                var expected = poisoned switch
                {
                    "q" => Enumerable.Range(at * width, headDim),
                    "k" => Enumerable.Range(at * width, (t - at) * width),
                    _ => Enumerable.Range(0, (t - at) * heads).Select(rh => (at * width) + (rh * headDim) + 3), // only element 3 of each later row
                };
                AssertNaN(o, expected, what);
                if (poisoned == "q")
                {
                    AssertFinite(o, Enumerable.Range((at * width) + headDim, ((t - at) * width) - headDim), what + " other rows");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void BackwardPassesCarryANaNGradient(SimdPath path)
    {
        var options = new KernelOptions(1, path);
        const int rows = 4, cols = 16;
        var ops = new (string Name, Func<Tensor, Tensor> Op)[]
        {
            ("gemm", x => Functional.Gemm(x, new Tensor(TestUtil.Random(cols * cols, 2), cols, cols), null, options)),
            ("rmsnorm", x => Functional.RmsNorm(x, new Tensor(TestUtil.Random(cols, 2), cols), 1e-5f, options)),
            ("swiglu", x => Functional.SwiGlu(x, new Tensor(TestUtil.Random(rows * cols, 2), rows, cols), options)),
            ("ia3", x => Functional.ScaleColumns(x, new Tensor(TestUtil.Random(cols, 2), cols), options)),
            ("attention", x => Functional.Attention(x, new Tensor(TestUtil.Random(rows * 8, 2), rows, 8), new Tensor(TestUtil.Random(rows * 8, 3), rows, 8), 1, 2, 1, 8, options)),
        };
        foreach (var (name, op) in ops)
        {
            var x = new Parameter(TestUtil.Random(rows * cols, 1), [rows, cols], trainable: true);
            var dy = With(new float[rows * cols], 0, float.NaN);
            Autograd.Tape.Backward(op(x), dy);
            Assert.True(float.IsNaN(x.Grad![0]), $"{name} {path}: dx[0] is {x.Grad[0]}");
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndPoisons))]
    public void AdamWStepAndSumOfSquaresPropagate(SimdPath path, float poison)
    {
        var options = new KernelOptions(2, path);
        foreach (int count in new[] { 100, 70_000 })
        {
            int at = count - 3;
            var grad = With(TestUtil.Random(count, 1), at, poison);
            var param = TestUtil.Random(count, 2);
            AdamW.Step(param, grad, new float[count], new float[count], 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, options);
            Assert.True(float.IsNaN(param[at]), $"adamw {count} {path}: {param[at]}");
            Assert.True(float.IsFinite(param[0]), $"adamw {count} {path}: other parameter {param[0]}");

            double sum = AdamW.SumOfSquares(grad, options);
            Assert.Equal(float.IsNaN(poison) ? double.NaN : double.PositiveInfinity, sum);
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void DoraRowNormsPropagate(SimdPath path)
    {
        const int inF = 37, outF = 5, r = 3;
        var options = new KernelOptions(1, path);
        foreach (string poisoned in new[] { "w", "A", "B" })
        {
            var w = poisoned == "w" ? With(TestUtil.Random(outF * inF, 1), (2 * inF) + 4, float.NaN) : TestUtil.Random(outF * inF, 1);
            var a = poisoned == "A" ? With(TestUtil.Random(r * inF, 2), 4, float.NaN) : TestUtil.Random(r * inF, 2);
            var b = poisoned == "B" ? With(TestUtil.Random(outF * r, 3), 2 * r, float.NaN) : TestUtil.Random(outF * r, 3);
            var norms = new float[outF];
            DoraNorm.RowNorms(WeightOperand.F32(w, outF, inF), a, b, 0.5f, norms, inF, outF, r, options);
            AssertNaN(norms, poisoned == "A" ? Enumerable.Range(0, outF) : [2], $"dora norms {poisoned}");
        }
    }
}
