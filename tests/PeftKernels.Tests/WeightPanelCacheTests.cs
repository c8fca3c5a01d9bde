using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using PeftKernels.Ops;
using PeftKernels.Peft;
using Xunit;
using LoraFactors = PeftKernels.Ops.LoraFactors;

namespace PeftKernels.Tests;

/// <summary>
/// Kept bf16 panels of frozen weights (WeightPanelCache): with bf16 compute, a GEMM that reads a kept panel gives the
/// same bits as one that packs the weight afresh (cache off), on every bf16 micro-kernel, every weight storage, awkward
/// sizes and K longer than one block; a change of the weight is seen (the owner clears, a Tensor bumps its version on
/// every hand-out of its storage, on MarkChanged and on a merge); trained weights and fp32 compute keep nothing.
/// </summary>
public class WeightPanelCacheTests
{
    public static TheoryData<Bf16Kernel, SimdPath> Kernels() => Bf16ComputeTests.Kernels();

    private static bool Pairs(Bf16Kernel kernel, SimdPath path) => GemmDriver.ResolveBf16(kernel, path) != Bf16Kernel.Managed;

    private static WeightOperand Operand(int storage, float[] w, int rows, int cols, WeightPanelCache? cache) => (storage switch
    {
        0 => WeightOperand.F32(w, rows, cols),
        1 => WeightOperand.Bf16(w.Select(Bf16.FromSingle).ToArray(), rows, cols),
        _ => WeightOperand.F16(w.Select(v => (Half)v).ToArray(), rows, cols),
    }).WithPanelCache(cache);

    /// <summary>y, h, dx, da, db of the LoRA op, then y of x·Wᵀ and dx of g·W (Gemm.Forward / Backward), concatenated.</summary>
    private static float[] Run(WeightOperand w, KernelOptions kernel, float[] x, float[] a, float[] b, float[] dyLora, float[] dyGemm,
        int n, int inF, int outF, int r, float drop)
    {
        var options = new LoraOptions(drop, 7, kernel);
        var y = new float[n * outF];
        var h = new float[n * r];
        LoraMatmul.Forward(x, w, [], a, b, 1.5f, y, h, n, inF, outF, r, options);
        var dx = new float[n * inF];
        var da = new float[r * inF];
        var db = new float[outF * r];
        LoraMatmul.Backward(dyLora, x, h, w, a, b, 1.5f, dx, da, db, n, inF, outF, r, options);
        var gy = new float[n * outF];
        Gemm.Forward(x, w, [], gy, n, inF, outF, kernel);
        var gdx = new float[n * inF];
        Gemm.Backward(dyGemm, w, gdx, n, inF, outF, kernel);
        return [.. y, .. h, .. dx, .. da, .. db, .. gy, .. gdx];
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void KeptPanelsGiveTheBitsOfAFreshPackAndAChangeIsSeenAfterClear(Bf16Kernel kernel, SimdPath path)
    {
        // (n, in, out, r, dropout): odd and even K splits, K over one 1024 block (in 1100 forward, out 1030 backward).
        (int N, int In, int Out, int R, float Drop)[] cases = [(37, 70, 45, 5, 0f), (13, 1100, 67, 3, 0.1f), (9, 69, 1030, 16, 0f)];
        foreach (var c in cases)
        {
            for (int storage = 0; storage < 3; storage++)
            {
                string what = $"{kernel} {path} storage {storage} n={c.N} in={c.In} out={c.Out} r={c.R}";
                int seed = c.N + c.In + storage;
                var x = TestUtil.Random(c.N * c.In, seed);
                var w = TestUtil.Random(c.Out * c.In, seed + 1);
                var a = TestUtil.Random(c.R * c.In, seed + 2);
                var b = TestUtil.Random(c.Out * c.R, seed + 3);
                var dyLora = TestUtil.Random(c.N * c.Out, seed + 4);
                var dyGemm = TestUtil.Random(c.N * c.Out, seed + 5);
                var on = new KernelOptions(2, path) { Compute = ComputePrecision.Bf16, Bf16Kernel = kernel };
                var off = on with { NoWeightPanelCache = true };
                var cache = new WeightPanelCache();

                var fresh = Run(Operand(storage, w, c.Out, c.In, cache), off, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                Assert.Equal(0, cache.Count);
                var first = Run(Operand(storage, w, c.Out, c.In, cache), on, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                Assert.True(Pairs(kernel, path) ? cache.Count > 0 : cache.Count == 0, $"{what}: {cache.Count} kept panels");
                long hits = WeightPanelCache.Hits;
                var second = Run(Operand(storage, w, c.Out, c.In, cache), on, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                Assert.True(!Pairs(kernel, path) || WeightPanelCache.Hits > hits, $"{what}: the second call read no kept panel");
                Assert.Equal(fresh, first);
                Assert.Equal(fresh, second);

                // A changed weight: kept panels are the old values until the owner clears them, then the new ones are packed.
                var w2 = w.Select(v => -2f * v).ToArray();
                var changed = Run(Operand(storage, w2, c.Out, c.In, null), off, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                Assert.NotEqual(fresh, changed);
                if (Pairs(kernel, path))
                {
                    var stale = Run(Operand(storage, w2, c.Out, c.In, cache), on, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                    Assert.NotEqual(changed, stale);
                }

                cache.Clear();
                Assert.Equal(0, cache.Bytes);
                var after = Run(Operand(storage, w2, c.Out, c.In, cache), on, x, a, b, dyLora, dyGemm, c.N, c.In, c.Out, c.R, c.Drop);
                Assert.Equal(changed, after);
            }
        }
    }

    [Fact]
    public void Fp32ComputeKeepsNothingAndIsBitIdenticalWithACache()
    {
        int n = 20, inF = 50, outF = 40, r = 4;
        var x = TestUtil.Random(n * inF, 1);
        var w = TestUtil.Random(outF * inF, 2);
        var a = TestUtil.Random(r * inF, 3);
        var b = TestUtil.Random(outF * r, 4);
        var dy = TestUtil.Random(n * outF, 5);
        var cache = new WeightPanelCache();
        var with = Run(WeightOperand.F32(w, outF, inF).WithPanelCache(cache), new KernelOptions(2), x, a, b, dy, dy, n, inF, outF, r, 0f);
        var without = Run(WeightOperand.F32(w, outF, inF), new KernelOptions(2), x, a, b, dy, dy, n, inF, outF, r, 0f);
        Assert.Equal(without, with);
        Assert.Equal(0, cache.Count);
    }

    private static (Tensor X, Tensor W, LoraFactors Lora) Layer(TensorDType storage, int n, int inF, int outF, int r)
    {
        var w = TestUtil.Random(outF * inF, 11);
        var weight = storage == TensorDType.BF16 ? new Tensor(w.Select(Bf16.FromSingle).ToArray(), outF, inF) : new Tensor(w, outF, inF);
        var lora = new LoraFactors(new Tensor(TestUtil.Random(r * inF, 12), r, inF), new Tensor(TestUtil.Random(outF * r, 13), outF, r), 2f);
        return (new Tensor(TestUtil.Random(n * inF, 14), n, inF), weight, lora);
    }

    private static readonly LoraOptions Bf16Options = new(0f, 1, new KernelOptions(1) { Compute = ComputePrecision.Bf16 });

    private static float[] Forward(Tensor x, Tensor weight, LoraFactors lora)
    {
        using var scope = Tape.NoGrad();
        return Functional.LoraMatmul(x, weight, null, lora, Bf16Options).Data;
    }

    /// <summary>The same values in a tensor that has never kept anything.</summary>
    private static Tensor Copy(Tensor t) => t.DType == TensorDType.BF16 ? new Tensor(t.ToFloat32().Select(Bf16.FromSingle).ToArray(), t.Shape) : new Tensor(t.ToFloat32(), t.Shape);

    [Theory]
    [InlineData(TensorDType.F32)]
    [InlineData(TensorDType.BF16)]
    public void AFrozenTensorSeesEveryChangeOfItsValues(TensorDType storage)
    {
        if (!Pairs(Bf16Kernel.Auto, KernelOptions.Best))
        {
            return; // only the pair micro-kernels keep panels (the fresh-pack equality above covers the others)
        }

        var (x, weight, lora) = Layer(storage, 24, 40, 72, 4);
        var y0 = Forward(x, weight, lora);
        Assert.True(weight.KeptPanelBytes > 0, "a frozen weight under bf16 compute keeps its panels");
        Assert.Equal(y0, Forward(x, weight, lora));

        // 1. Written through the storage handed out now (Data / Bf16Bits count as a change).
        if (storage == TensorDType.F32)
        {
            weight.Data[5] += 3f;
        }
        else
        {
            weight.Bf16Bits[5] = Bf16.FromSingle(7f);
        }

        var y1 = Forward(x, weight, lora);
        Assert.NotEqual(y0, y1);
        Assert.Equal(Forward(x, Copy(weight), lora), y1);

        // 2. Written through an array obtained before the last forward: MarkChanged() makes it seen.
        var held = storage == TensorDType.F32 ? (Array)weight.Data : weight.Bf16Bits;
        Forward(x, weight, lora);
        if (held is float[] f)
        {
            Array.Fill(f, 0.5f, 0, 40);
        }
        else
        {
            Array.Fill((ushort[])held, Bf16.FromSingle(0.5f), 0, 40);
        }

        weight.MarkChanged();
        var y2 = Forward(x, weight, lora);
        Assert.NotEqual(y1, y2);
        Assert.Equal(Forward(x, Copy(weight), lora), y2);
    }

    [Fact]
    public void ATrainedWeightKeepsNothing()
    {
        var (x, weight, lora) = Layer(TensorDType.F32, 24, 40, 72, 4);
        var p = new Parameter(weight.ToFloat32(), weight.Shape, trainable: true);
        Forward(x, p, lora);
        Assert.Equal(0, p.KeptPanelBytes);
        Forward(x, weight, new LoraFactors(lora.A, lora.B, lora.Scale));
        Assert.Equal(Pairs(Bf16Kernel.Auto, KernelOptions.Best), weight.KeptPanelBytes > 0);
    }

    [Fact]
    public void AMergedModelUnderBf16ComputeUsesTheMergedWeights()
    {
        // Logits of a LoRA model at bf16 compute, the LoRA merged into the (kept) base weights, then the logits again:
        // with stale panels the merged model would lose the LoRA update and differ by far more than bf16 rounding;
        // unmerged, the kept panels of the restored weights must give the first logits bit for bit.
        var model = LlamaModelTests.TinyModel(Models.LlamaConfig.Tiny(64));
        var peft = new PeftModel(model, PeftModelTests.Config("all-linear"), "a");
        PeftModelTests.Randomize(model, "a", 10);
        var context = new ForwardContext(0, new KernelOptions(1) { Compute = ComputePrecision.Bf16 });
        int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8];
        float[] Logits()
        {
            using var scope = Tape.NoGrad();
            return model.Forward(tokens, context: context).Data;
        }

        float[] baseOnly;
        using (peft.DisableAdapter())
        {
            baseOnly = Logits();
        }

        var before = Logits();
        Logits(); // the second forward reads kept panels
        peft.Merge();
        var merged = Logits();
        peft.Unmerge();
        Assert.Equal(before, Logits());
        peft.Merge();
        var mergedAgain = Logits();
        double Diff(float[] p, float[] q) => p.Zip(q, (u, v) => Math.Abs(u - (double)v)).Max();
        double scale = before.Max(v => Math.Abs((double)v));
        Assert.True(Diff(before, merged) <= 0.05 * scale, $"merged logits differ from the unmerged ones by {Diff(before, merged):G3} (max |logit| {scale:G3})");
        Assert.Equal(merged, mergedAgain);
        Assert.True(Diff(before, baseOnly) > 4 * Diff(before, merged), "the LoRA update is visible in the logits (else the test proves nothing)");
    }
}
