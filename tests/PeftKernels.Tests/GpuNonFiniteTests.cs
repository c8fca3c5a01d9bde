// The GPU kernels propagate NaN and ±Inf as the CPU kernels do (NonFiniteTests.cs,
// NonFiniteAttentionTests.cs), through the ops on a device: the shared ILGPU CPU accelerator stands
// in for CUDA (same kernels, simulated threads). One poisoned element reaches exactly the outputs
// that depend on it; masked attention keys never contribute; backward carries NaN to the gradients.
// (On CUDA, max.f32 drops a NaN operand where .NET's MathF.Max keeps it; the kernels do not rely on
// the max for propagation: the exp of a NaN score or lse is NaN on both.)
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.NonFiniteTests;

namespace PeftKernels.Tests;

/// <summary>NaN and ±Inf through every GPU op that has a CPU counterpart in <see cref="NonFiniteTests"/>.</summary>
[Collection("Gpu")]
public class GpuNonFiniteTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    private Tensor On(float[] values, params int[] shape) => new Tensor(values, shape).To(Accel);

    [Fact]
    public void EmbeddingRmsNormAndElementwiseOpsPropagate()
    {
        var y = Functional.Embedding([0, 2, 2], On(With(TestUtil.Random(5 * 4, 1), (2 * 4) + 1, float.NaN), 5, 4)).Data;
        AssertNaN(y, [5, 9], "embedding");
        AssertFinite(y, Row(0, 4), "embedding row 0");

        const int n = 3, dim = 37;
        foreach (float poison in new[] { float.NaN, float.PositiveInfinity })
        {
            var norm = Functional.RmsNorm(On(With(TestUtil.Random(n * dim, 1), dim + 5, poison), n, dim), On(TestUtil.Random(dim, 2), dim), 1e-5f).Data;
            AssertNaN(norm, float.IsNaN(poison) ? Row(1, dim) : [dim + 5], $"rmsnorm x {poison}");
            AssertFinite(norm, Row(0, dim), "rmsnorm row 0");
        }

        var normW = Functional.RmsNorm(On(TestUtil.Random(n * dim, 1), n, dim), On(With(TestUtil.Random(dim, 2), 5, float.NaN), dim), 1e-5f).Data;
        AssertNaN(normW, Column(5, n, dim), "rmsnorm weight");

        const int rows = 3, cols = 40;
        Tensor Poisoned(int seed) => On(With(TestUtil.Random(rows * cols, seed), cols + 7, float.NaN), rows, cols);
        Tensor Clean(int seed) => On(TestUtil.Random(rows * cols, seed), rows, cols);
        AssertNaN(Functional.Add(Poisoned(1), Clean(2)).Data, [cols + 7], "add a");
        AssertNaN(Functional.Add(Clean(1), Poisoned(2)).Data, [cols + 7], "add b");
        AssertNaN(Functional.SwiGlu(Poisoned(1), Clean(2)).Data, [cols + 7], "swiglu gate");
        AssertNaN(Functional.SwiGlu(Clean(1), Poisoned(2)).Data, [cols + 7], "swiglu up");
        AssertNaN(Functional.ScaleColumns(Poisoned(1), On(TestUtil.Random(cols, 3), cols)).Data, [cols + 7], "ia3 x");
        AssertNaN(Functional.ScaleColumns(Clean(1), On(With(TestUtil.Random(cols, 3), 7, float.NaN), cols)).Data, Column(7, rows, cols), "ia3 scale");
        var invFreq = Enumerable.Range(0, 10).Select(i => MathF.Pow(10000f, -i / 10f)).ToArray();
        var rope = Functional.Rope(Poisoned(1), [0, 1, 2], invFreq, heads: 2, headDim: 20).Data;
        AssertNaN(rope, [cols + 7, cols + 17], "rope");
        AssertFinite(rope, Row(0, cols), "rope row 0");
    }

    [Fact]
    public void CrossEntropyForwardAndBackwardPropagate()
    {
        foreach (float poison in new[] { float.NaN, float.PositiveInfinity })
        {
            foreach (int vocab in new[] { 50, 3000 })
            {
                var logits = With(TestUtil.Random(3 * vocab, vocab), vocab + (vocab / 2), poison);
                using var dLogits = gpu.Upload(logits);
                using var labels = gpu.Upload(new[] { 1, 2, 3 });
                using var lse = gpu.Poisoned(3);
                double loss = CrossEntropyKernels.Forward(gpu.Accelerator, dLogits.View, labels.View, lse.View, 3, vocab);
                string what = $"cross-entropy {poison} vocab {vocab}";
                Assert.True(double.IsNaN(loss), $"{what}: loss {loss}");
                var rowLse = gpu.Download(lse.View);
                Assert.True(float.IsFinite(rowLse[0]) && float.IsFinite(rowLse[2]) && !float.IsFinite(rowLse[1]), $"{what}: lse {string.Join(", ", rowLse)}");

                CrossEntropyKernels.BackwardInPlace(gpu.Accelerator, dLogits.View, labels.View, lse.View, 0.5f, 3, vocab);
                var grad = gpu.Download(dLogits.View);
                AssertNaN(grad, Row(1, vocab), what + " gradient");
                AssertFinite(grad, Row(0, vocab).Concat(Row(2, vocab)), what + " other rows");
            }
        }
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("bf16")]
    [InlineData("f16")]
    [InlineData("nf4")]
    public void GemmPropagatesFromXAndWeight(string format)
    {
        const int k = 37, n = 5;
        foreach (int m in new[] { 1, 3, 40 })
        {
            var w = TestUtil.Random(n * k, 2);
            Tensor Weight(float[] values) => (format switch
            {
                "f32" => new Tensor(values, n, k),
                "bf16" => new Tensor(values.Select(Bf16Reference.FromSingle).ToArray(), n, k),
                "f16" => new Tensor(values.Select(v => (Half)v).ToArray(), n, k),
                _ => new Tensor(QuantizedWeight.Quantize(values, [n, k], Quant4Type.Nf4, 64, false)),
            }).To(Accel);

            int row = m / 2;
            var y = Functional.Gemm(On(With(TestUtil.Random(m * k, 1), (row * k) + 4, float.NaN), m, k), Weight(w), null).Data;
            AssertNaN(y, Row(row, n), $"gemm x {format} m {m}");
            var yw = Functional.Gemm(On(TestUtil.Random(m * k, 1), m, k), Weight(format == "nf4" ? w : With(w, (2 * k) + 4, float.NaN)), null).Data;
            if (format != "nf4")
            {
                AssertNaN(yw, Column(2, m, n), $"gemm weight {format} m {m}");
            }
            else
            {
                AssertFinite(yw, Enumerable.Range(0, m * n), $"gemm clean nf4 m {m}");
            }
        }
    }

    [Fact]
    public void LoraMatmulAndBranchPropagateFromXAAndB()
    {
        const int m = 3, k = 37, n = 6, r = 4;
        var w = On(TestUtil.Random(n * k, 2), n, k);
        foreach (string poisoned in new[] { "x", "A", "B" })
        {
            var x = On(poisoned == "x" ? With(TestUtil.Random(m * k, 1), k + 4, float.NaN) : TestUtil.Random(m * k, 1), m, k);
            var a = On(poisoned == "A" ? With(TestUtil.Random(r * k, 3), 4, float.NaN) : TestUtil.Random(r * k, 3), r, k);
            var b = On(poisoned == "B" ? With(TestUtil.Random(n * r, 4), 2 * r, float.NaN) : TestUtil.Random(n * r, 4), n, r);
            var factors = new LoraFactors(a, b, 0.5f);
            var expected = poisoned switch
            {
                "x" => Row(1, n),
                "A" => Enumerable.Range(0, m * n),
                _ => Column(2, m, n),
            };
            AssertNaN(Functional.LoraMatmul(x, w, null, factors, default).Data, expected, $"lora matmul {poisoned}");
            AssertNaN(Functional.LoraBranch(On(TestUtil.Random(m * n, 5), m, n), x, factors, null, default).Data, expected, $"lora branch {poisoned}");
        }
    }

    /// <summary>The GPU attention kernels give the double reference's pattern (NaN where it is NaN, masked keys never contributing).</summary>
    [Theory]
    [InlineData("q", float.NaN)]
    [InlineData("k", float.NaN)]
    [InlineData("v", float.NaN)]
    [InlineData("dO", float.NaN)]
    [InlineData("q", float.PositiveInfinity)]
    [InlineData("k", float.NegativeInfinity)]
    [InlineData("v", float.PositiveInfinity)]
    public void AttentionForwardAndBackwardGiveTheReferencesNonFinitePattern(string target, float poison)
    {
        foreach (var (b, tq, tk, h, hkv, d) in new[] { (1, 20, 20, 2, 1, 8), (1, 40, 45, 4, 2, 16), (1, 3, 37, 2, 1, 8) })
        {
            float scale = 1f / MathF.Sqrt(d);
            var q = TestUtil.Random(b * tq * h * d, 1);
            var k = TestUtil.Random(b * tk * hkv * d, 2);
            var v = TestUtil.Random(b * tk * hkv * d, 3);
            var dO = TestUtil.Random(q.Length, 4);
            var poisoned = target switch { "q" => q, "k" => k, "v" => v, _ => dO };
            int positions = target is "q" or "dO" ? tq : tk, width = poisoned.Length / positions;
            poisoned[((positions / 2) * width) + (width / 2)] = poison;
            string what = $"{target}={poison} [{b}, {tq}, {tk}, {h}, {hkv}, {d}]";

            using var gq = gpu.Upload(q);
            using var gk = gpu.Upload(k);
            using var gv = gpu.Upload(v);
            using var gdo = gpu.Upload(dO);
            using var o = gpu.Poisoned(q.Length);
            using var lse = gpu.Poisoned(b * h * tq);
            AttentionKernels.Forward(gpu.Accelerator, gq.View, gk.View, gv.View, o.View, lse.View, b, tq, tk, h, hkv, d, scale);
            var (oRef, lseRef) = AttentionReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), b, tq, tk, h, hkv, d, scale);
            NonFiniteAttentionTests.AssertPattern(gpu.Download(o.View), oRef, 1e-4, what + " o");
            NonFiniteAttentionTests.AssertPattern(gpu.Download(lse.View), lseRef, 1e-4, what + " lse");
            if (!float.IsNaN(poison))
            {
                continue;
            }

            using var dq = gpu.Poisoned(q.Length);
            using var dk = gpu.Poisoned(k.Length);
            using var dv = gpu.Poisoned(v.Length);
            AttentionKernels.Backward(gpu.Accelerator, gdo.View, gq.View, gk.View, gv.View, o.View, lse.View, dq.View, dk.View, dv.View, b, tq, tk, h, hkv, d, scale);
            var (dqRef, dkRef, dvRef) = AttentionReference.Backward(TestUtil.ToDouble(dO), TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v),
                b, tq, tk, h, hkv, d, scale);
            NonFiniteAttentionTests.AssertPattern(gpu.Download(dq.View), dqRef, 1e-3, what + " dq");
            NonFiniteAttentionTests.AssertPattern(gpu.Download(dk.View), dkRef, 1e-3, what + " dk");
            NonFiniteAttentionTests.AssertPattern(gpu.Download(dv.View), dvRef, 1e-3, what + " dv");
        }
    }

    [Fact]
    public void BackwardPassesCarryANaNGradient()
    {
        const int rows = 4, cols = 16;
        var ops = new (string Name, Func<Tensor, Tensor> Op)[]
        {
            ("gemm", x => Functional.Gemm(x, On(TestUtil.Random(cols * cols, 2), cols, cols), null)),
            ("rmsnorm", x => Functional.RmsNorm(x, On(TestUtil.Random(cols, 2), cols), 1e-5f)),
            ("swiglu", x => Functional.SwiGlu(x, On(TestUtil.Random(rows * cols, 2), rows, cols))),
            ("ia3", x => Functional.ScaleColumns(x, On(TestUtil.Random(cols, 2), cols))),
            ("attention", x => Functional.Attention(x, On(TestUtil.Random(rows * 8, 2), rows, 8), On(TestUtil.Random(rows * 8, 3), rows, 8), 1, 2, 1, 8)),
        };
        foreach (var (name, op) in ops)
        {
            var x = new Parameter(TestUtil.Random(rows * cols, 1), [rows, cols], trainable: true);
            x.MoveTo(Accel);
            var dy = With(new float[rows * cols], 0, float.NaN);
            Tape.Backward(op(x), dy);
            Assert.True(float.IsNaN(x.Grad![0]), $"{name}: dx[0] is {x.Grad[0]}");
        }
    }

    [Fact]
    public void AdamWStepAndSumOfSquaresPropagate()
    {
        foreach (float poison in new[] { float.NaN, float.PositiveInfinity })
        {
            const int count = 3000, at = count - 3;
            var grad = With(TestUtil.Random(count, 1), at, poison);
            using var p = gpu.Upload(TestUtil.Random(count, 2));
            using var g = gpu.Upload(grad);
            using var m = gpu.Upload(new float[count]);
            using var v = gpu.Upload(new float[count]);
            AdamWKernels.Step(gpu.Accelerator, p.View, g.View, m.View, v.View, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
            var param = gpu.Download(p.View);
            Assert.True(float.IsNaN(param[at]), $"adamw {poison}: {param[at]}");
            Assert.True(float.IsFinite(param[0]), $"adamw {poison}: other parameter {param[0]}");
            Assert.Equal(float.IsNaN(poison) ? double.NaN : double.PositiveInfinity, AdamWKernels.SumOfSquares(gpu.Accelerator, g.View));
        }
    }
}
