// The adapter and full-training kernels, CUDA vs CPU (see KernelChecks.cs; the comparisons of
// tests/PeftKernels.Tests/GpuLoraBranchTests.cs, GpuDoraNormTests.cs, GpuAdamWTests.cs,
// GpuColumnSumsTests.cs and GpuEmbeddingTests.cs at moderate shapes):
// - LoraBranchKernels over all rows and over a row subset (unsorted), with dropout, against the CPU
//   LoraMatmul on the gathered rows with a zero base weight (the same math and the same mask, which
//   is seeded by the gathered storage index on both sides), scattered back;
// - SegmentedLoraKernels.Bgmv and Sgmv (64 adapters of ranks 1–128) against the CPU SegmentedLora;
// - DoraNormKernels.RowNorms (fp32 and NF4 base) against the CPU DoraNorm, Divide against x / y;
// - AdamWKernels.SumOfSquares and Scale against the CPU AdamW's; ColumnSumsKernels.Add against a
//   double sum; EmbeddingKernels.Backward against the CPU autograd's fp32 scatter-add loop.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.GpuRunner;

internal static partial class KernelChecks
{
    private static double MaxAbs(float[] values) => values.Length == 0 ? 0 : values.Max(MathF.Abs);

    private static void LoraBranch(Accelerator acc, Report report)
    {
        var (n, inF, outF, r) = (200, 512, 384, 16);
        const float scale = 1.5f;
        var x = Data.Random(n * inF, 1);
        var y0 = Data.Random(n * outF, 2);
        var bias = Data.Random(outF, 3);
        var a = Data.Random(r * inF, 4);
        var b = Data.Random(outF * r, 5);
        var dy = Data.Random(n * outF, 6);
        var zeroW = new float[outF * inF];
        foreach (bool subset in new[] { false, true })
        {
            // The subset: two rows of three, in descending order (the gather must follow the list, not the row order).
            int[]? rows = subset ? [.. Enumerable.Range(0, n).Where(i => i % 3 != 1).Reverse()] : null;
            int[] used = rows ?? [.. Enumerable.Range(0, n)];
            int m = used.Length;
            var options = new LoraOptions(0.1f, 77);
            float[] xr = Gather(x, used, inF), dyr = Gather(dy, used, outF);
            float[] branch = new float[m * outF], h = new float[m * r], dxr = new float[m * inF], da = new float[r * inF], db = new float[outF * r];
            LoraMatmul.Forward(xr, WeightOperand.F32(zeroW, outF, inF), bias, a, b, scale, branch, h, m, inF, outF, r, options);
            LoraMatmul.Backward(dyr, xr, h, WeightOperand.F32(zeroW, outF, inF), a, b, scale, dxr, da, db, m, inF, outF, r, options);
            var y = (float[])y0.Clone();
            var dx = new float[n * inF];
            for (int i = 0; i < m; i++)
            {
                for (int o = 0; o < outF; o++)
                {
                    y[(used[i] * outF) + o] += branch[(i * outF) + o];
                }

                Array.Copy(dxr, i * inF, dx, used[i] * inF, inF);
            }

            using var gx = acc.Allocate1D(x);
            using var gy = acc.Allocate1D(y0);
            using var gbias = acc.Allocate1D(bias);
            using var ga = acc.Allocate1D(a);
            using var gb = acc.Allocate1D(b);
            using var gdy = acc.Allocate1D(dy);
            using var gh = acc.Allocate1D<float>(m * r);
            using var gdx = acc.Allocate1D<float>(n * inF);
            using var gda = acc.Allocate1D<float>(r * inF);
            using var gdb = acc.Allocate1D<float>(outF * r);
            LoraBranchKernels.ForwardAccumulate(acc, gx.View, rows, ga.View, gb.View, gbias.View, scale, gy.View, gh.View, n, inF, outF, r, options);
            LoraBranchKernels.Backward(acc, gdy.View, gx.View, rows, gh.View, ga.View, gb.View, scale, gdx.View, gda.View, gdb.View, n, inF, outF, r, options);

            // As GpuLoraBranchTests (K-term fp32 sums relative to max(1, max|ref|)), doubled: both sides round.
            string shape = $"n{n} in{inF} out{outF} r{r} p0.1 rows {(subset ? $"{m} of {n}, reversed" : "all")}";
            Compare(report, "lora branch h", shape, Data.Down(acc, gh.View), h, DotAtol(inF, MaxAbs(h)), 1e-5);
            Compare(report, "lora branch y (accumulated)", shape, Data.Down(acc, gy.View), y, DotAtol(inF + r, MaxAbs(y)) * (1 + scale), 1e-5);
            Compare(report, "lora branch dx", shape, Data.Down(acc, gdx.View), dx, DotAtol(outF + r, MaxAbs(dx)) * (1 + (scale * r)), 1e-5);
            // da = dhᵀ·drop(xR) with dh = s·gR·b: sums of out terms, then of m (the test's m·out would allow ~5% here).
            Compare(report, "lora branch da", shape, Data.Down(acc, gda.View), da, DotAtol(m + outF, MaxAbs(da)) * scale, 1e-5);
            Compare(report, "lora branch db", shape, Data.Down(acc, gdb.View), db, DotAtol(m, MaxAbs(db)) * scale, 1e-5);
        }
    }

    private static void SegmentedLoraCheck(Accelerator acc, Report report)
    {
        // 64 adapters of ranks 1–128 in one pool; BGMV on 64 rows (every 5th without adapter), SGMV on 256 rows in 20 segments (one empty).
        var (k, inF, outF) = (64, 1024, 768);
        int[] rankSet = [1, 3, 8, 16, 64, 128];
        var ranks = Enumerable.Range(0, k).Select(i => rankSet[i % rankSet.Length]).ToArray();
        var pack = SegmentedLoraPack.Pack([.. ranks.Select((r, i) => Data.Random(r * inF, 10 + i))], [.. ranks.Select((r, i) => Data.Random(outF * r, 100 + i))], inF, outF);
        int maxRank = SegmentedLoraKernels.CheckAdapters(pack.Ranks, pack.AOffsets, pack.BOffsets, pack.Factors.Length, inF, outF);
        using var gf = acc.Allocate1D(pack.Factors);
        using var gr = acc.Allocate1D(pack.Ranks);
        using var gao = acc.Allocate1D(pack.AOffsets);
        using var gbo = acc.Allocate1D(pack.BOffsets);
        foreach (bool sgmv in new[] { false, true })
        {
            int n = sgmv ? 256 : 64, s = 20;
            int[] keys = sgmv ? [.. Enumerable.Range(0, s).Select(t => t == 7 ? -1 : (t * 29) % k)] : [.. Enumerable.Range(0, n).Select(i => i % 5 == 4 ? -1 : (i * 37) % k)];
            int[] starts = [.. Enumerable.Range(0, s + 1).Select(t => t == 3 ? 24 : Math.Min(n, 12 * t))];
            var scales = Data.Random(keys.Length, 3).Select(v => 2 * v).ToArray();
            var x = Data.Random(n * inF, 1);
            var y = Data.Random(n * outF, 2);
            using var gx = acc.Allocate1D(x);
            using var gy = acc.Allocate1D(y);
            using var gkeys = acc.Allocate1D(keys);
            using var gs = acc.Allocate1D(scales);
            using var gstarts = acc.Allocate1D(starts);
            using var gh = acc.Allocate1D<float>(n * maxRank);
            if (sgmv)
            {
                SegmentedLoraKernels.Sgmv(acc, gx.View, gstarts.View, gkeys.View, gs.View, gf.View, gr.View, gao.View, gbo.View, maxRank, gy.View, gh.View, n, inF, outF);
                SegmentedLora.Sgmv(x, starts, keys, scales, pack.Adapters, y, n, inF, outF);
            }
            else
            {
                SegmentedLoraKernels.Bgmv(acc, gx.View, gkeys.View, gs.View, gf.View, gr.View, gao.View, gbo.View, maxRank, gy.View, gh.View, n, inF, outF);
                SegmentedLora.Bgmv(x, keys, scales, pack.Adapters, y, n, inF, outF);
            }

            // Dots of in, then of r ≤ 128 terms, times |s| ≤ 2 (as GpuSegmentedLoraTests' bound at these sizes).
            Compare(report, sgmv ? "sgmv" : "bgmv", $"n{n} in{inF} out{outF} K{k} r1-128", Data.Down(acc, gy.View), y, DotAtol(inF + maxRank, 2 * MaxAbs(y)), 1e-5);
        }
    }

    private static float[] Gather(float[] source, int[] rows, int cols)
    {
        var gathered = new float[rows.Length * cols];
        for (int i = 0; i < rows.Length; i++)
        {
            Array.Copy(source, rows[i] * cols, gathered, i * cols, cols);
        }

        return gathered;
    }

    private static void DoraNormCheck(Accelerator acc, Report report)
    {
        var (outF, inF, r) = (1024, 768, 8);
        const float scale = 1.25f;
        var w = Data.Random(outF * inF, 1);
        var a = Data.Random(r * inF, 2);
        var b = Data.Random(outF * r, 3);
        using var ga = acc.Allocate1D(a);
        using var gb = acc.Allocate1D(b);
        using var gnorms = acc.Allocate1D<float>(outF);
        string shape = $"out{outF} in{inF} r{r}";

        // Each entry of W + s·B·A is r + 1 fp32 terms (FMA-contracted on the GPU), the squares are summed in double on both
        // sides: ≤ (r + 1)·2⁻²⁴ relative, doubled (as the test's 1e-6 at r ≤ 5).
        double rtol = 2 * (r + 1) * Math.Pow(2, -24);
        var expected = new float[outF];
        DoraNorm.RowNorms(WeightOperand.F32(w, outF, inF), a, b, scale, expected, inF, outF, r);
        using (var gw = acc.Allocate1D(w))
        {
            DoraNormKernels.RowNorms(acc, DeviceWeightOperand.Dense(gw.View, outF, inF), ga.View, gb.View, scale, gnorms.View, inF, outF, r);
            Compare(report, "dora row norms fp32", shape, Data.Down(acc, gnorms.View), expected, 0, rtol);
        }

        var q = QuantizedWeight.Quantize(w, [outF, inF], Quant4Type.Nf4, 64, true);
        DoraNorm.RowNorms(WeightOperand.Quant4(q), a, b, scale, expected, inF, outF, r);
        using (var gq = Quant4Buffers.Upload(acc, q))
        {
            DoraNormKernels.RowNorms(acc, DeviceWeightOperand.Quant4(gq.View), ga.View, gb.View, scale, gnorms.View, inF, outF, r);
            Compare(report, "dora row norms nf4", shape + " bs64 nested", Data.Down(acc, gnorms.View), expected, 0, rtol);
        }

        const int count = 1 << 20;
        var num = Data.Random(count, 4, 10f);
        var den = Data.Random(count, 5).Select(v => v + 2f).ToArray();
        using var gnum = acc.Allocate1D(num);
        using var gden = acc.Allocate1D(den);
        using var gquot = acc.Allocate1D<float>(count);
        DoraNormKernels.Divide(acc, gnum.View, gden.View, gquot.View);
        Compare(report, "dora divide", $"{count}", Data.Down(acc, gquot.View), [.. num.Zip(den, (p, d) => p / d)], 0, 0, "(bit-exact: div.rn)");
    }

    private static void TrainingKernels(Accelerator acc, Report report)
    {
        // Σ x² in double on both sides, only the grouping differs: positive terms, so ≤ n·2⁻⁵³ ≈ 5e-10 relative at worst and
        // ~√n·2⁻⁵³ ≈ 2e-13 in practice; 1e-10 still catches an fp32 accumulation (~1e-7). Scale: one IEEE multiply.
        int count = (1 << 22) + 17;
        var x = Data.Random(count, 1);
        using var gx = acc.Allocate1D(x);
        double sum = AdamW.SumOfSquares(x);
        double gpuSum = AdamWKernels.SumOfSquares(acc, gx.View);
        double diff = Math.Abs(gpuSum - sum);
        report.Add(new CheckResult("adamw sum of squares", $"{count}", diff, diff / sum, 0, 1e-10, diff <= 1e-10 * sum, "(double accumulation)"));
        AdamWKernels.Scale(acc, gx.View, 0.37f);
        AdamW.Scale(x, 0.37f);
        Compare(report, "adamw scale", $"{count}", Data.Down(acc, gx.View), x, 0, 0, "(bit-exact)");

        var (n, dim) = (4096, 1000);
        var dy = Data.Random(n * dim, 2);
        var sums = new double[dim];
        for (int i = 0; i < dy.Length; i++)
        {
            sums[i % dim] += dy[i];
        }

        using var gdy = acc.Allocate1D(dy);
        using var gdb = acc.Allocate1D<float>(dim);
        gdb.MemSetToZero();
        ColumnSumsKernels.Add(acc, gdy.View, gdb.View, n, dim);
        Compare(report, "bias column sums (vs double)", $"{n}x{dim}", Data.Down(acc, gdb.View), [.. sums.Select(s => (float)s)], DotAtol(n), 1e-6);

        // Token ids with repeats (1000 distinct of 32000) and rows that never occur (their gradient is exactly 0).
        var (vocab, tokens, width) = (32000, 4096, 512);
        int[] ids = [.. Enumerable.Range(0, tokens).Select(t => (int)((t * 7919L) % 1000) * 31)];
        var dout = Data.Random(tokens * width, 3);
        var dw = new float[vocab * width];
        for (int t = 0; t < tokens; t++)
        {
            for (int j = 0; j < width; j++)
            {
                dw[(ids[t] * width) + j] += dout[(t * width) + j];
            }
        }

        using var gdout = acc.Allocate1D(dout);
        using var gdw = acc.Allocate1D<float>(vocab * width);
        EmbeddingKernels.Backward(acc, gdout.View, ids, gdw.View, vocab, width);
        Compare(report, "embedding backward (scatter-add)", $"n{tokens} vocab{vocab} dim{width}", Data.Down(acc, gdw.View), dw, 0, 0, "(bit-exact: the CPU's order)");
    }
}
