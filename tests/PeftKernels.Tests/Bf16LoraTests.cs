using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The fused LoRA matmul forward and backward at bf16 compute against the double reference, on every bf16 micro-kernel
/// (Bf16ComputeTests.Kernels), fp32 and bf16 weight storage, awkward sizes, with and without dropout. The tolerance is
/// bf16-derived: each output may be off by c·u·(the same expression over absolute values), u = 2⁻⁸, c = 8 covering the
/// two chained roundings of the LoRA branch (x, A → h; h, B → y) and the operands of the base product.
/// </summary>
public class Bf16LoraTests
{
    private const double U = 1.0 / 256;

    public static TheoryData<Bf16Kernel, SimdPath> Kernels() => Bf16ComputeTests.Kernels();

    private static double[] Abs(float[] v) => v.Select(x => (double)Math.Abs(x)).ToArray();

    private static double[] Abs(double[] v) => v.Select(Math.Abs).ToArray();

    private static void AssertWithin(float[] got, double[] exact, double[] magnitude, string what)
    {
        for (int i = 0; i < got.Length; i++)
        {
            double bound = (8 * U * magnitude[i]) + 1e-6;
            double off = Math.Abs(got[i] - exact[i]);
            Assert.True(off <= bound, $"{what}: element {i} = {got[i]}, reference {exact[i]}, |diff| {off:G3} > bf16 bound {bound:G3}");
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void ForwardAndBackwardMatchTheDoubleReference(Bf16Kernel kernel, SimdPath path)
    {
        (int N, int In, int Out, int R, float Drop)[] cases = [(37, 70, 45, 5, 0f), (9, 33, 16, 16, 0.1f), (130, 129, 65, 8, 0f), (6, 17, 3, 1, 0f)];
        foreach (var c in cases)
        {
            foreach (bool bf16Weight in new[] { false, true })
            {
                int seed = c.N + c.In + (bf16Weight ? 1 : 0);
                var x = TestUtil.Random(c.N * c.In, seed);
                var w = bf16Weight ? TestUtil.Widen(TestUtil.RandomBf16(c.Out * c.In, seed + 1)) : TestUtil.Random(c.Out * c.In, seed + 1);
                var bias = TestUtil.Random(c.Out, seed + 2);
                var a = TestUtil.Random(c.R * c.In, seed + 3);
                var b = TestUtil.Random(c.Out * c.R, seed + 4);
                var dy = TestUtil.Random(c.N * c.Out, seed + 5);
                const float scale = 1.5f;
                var operand = bf16Weight ? WeightOperand.Bf16(w.Select(Bf16.FromSingle).ToArray(), c.Out, c.In) : WeightOperand.F32(w, c.Out, c.In);
                var options = new LoraOptions(c.Drop, 7, new KernelOptions(2, path) { Compute = ComputePrecision.Bf16, Bf16Kernel = kernel });
                string what = $"lora bf16 {kernel} {path} n={c.N} in={c.In} out={c.Out} r={c.R} drop={c.Drop} bf16W={bf16Weight}";

                var y = new float[c.N * c.Out];
                var h = new float[c.N * c.R];
                LoraMatmul.Forward(x, operand, bias, a, b, scale, y, h, c.N, c.In, c.Out, c.R, options);
                var (refY, refH) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bias), TestUtil.ToDouble(a), TestUtil.ToDouble(b),
                    scale, c.N, c.In, c.Out, c.R, c.Drop, 7);
                var (absY, absH) = LoraMatmulReference.Forward(Abs(x), Abs(w), Abs(bias), Abs(a), Abs(b), scale, c.N, c.In, c.Out, c.R, c.Drop, 7);
                AssertWithin(y, refY, absY, what + " y");
                AssertWithin(h, refH, absH, what + " h");

                var dx = new float[c.N * c.In];
                var da = new float[c.R * c.In];
                var db = new float[c.Out * c.R];
                LoraMatmul.Backward(dy, x, h, operand, a, b, scale, dx, da, db, c.N, c.In, c.Out, c.R, options);
                var (refDx, refDa, refDb) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), refH, TestUtil.ToDouble(w), TestUtil.ToDouble(a),
                    TestUtil.ToDouble(b), scale, c.N, c.In, c.Out, c.R, c.Drop, 7);
                var (absDx, absDa, absDb) = LoraMatmulReference.Backward(Abs(dy), Abs(x), Abs(absH), Abs(w), Abs(a), Abs(b), scale, c.N, c.In, c.Out, c.R, c.Drop, 7);
                AssertWithin(dx, refDx, absDx, what + " dx");
                AssertWithin(da, refDa, absDa, what + " da");
                AssertWithin(db, refDb, absDb, what + " db");
            }
        }
    }

    [Fact]
    public void Bf16ComputeChangesTheLoraResultAndFp32IsBitIdenticalToTheDefault()
    {
        int n = 40, inF = 64, outF = 48, r = 8;
        var x = TestUtil.Random(n * inF, 1);
        var w = WeightOperand.F32(TestUtil.Random(outF * inF, 2), outF, inF);
        var a = TestUtil.Random(r * inF, 3);
        var b = TestUtil.Random(outF * r, 4);
        float[] Run(KernelOptions k)
        {
            var y = new float[n * outF];
            LoraMatmul.Forward(x, w, [], a, b, 2f, y, new float[n * r], n, inF, outF, r, new LoraOptions(0f, 0, k));
            return y;
        }

        Assert.Equal(Run(default), Run(new KernelOptions { Compute = ComputePrecision.Fp32 }));
        Assert.NotEqual(Run(default), Run(new KernelOptions { Compute = ComputePrecision.Bf16 }));
    }
}
