// The CPU LoRA-branch kernel against its double reference: all rows and a row subset (unsorted),
// with and without dropout and bias, on awkward sizes and every SIMD path; skipped gradients; the
// branch's h on all rows equals LoraMatmul's (the same dropout mask); and the
// argument checks (the same messages as the GPU launcher's, from LoraBranchShapes).
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Tests;

public class LoraBranchKernelTests
{
    private static readonly double U = Math.Pow(2, -24);

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>Random x [n, inF], a [r, inF], b [outF, r] from the seeds seed, seed + 1, seed + 2.</summary>
    private static (float[] X, float[] A, float[] B) Operands(int n, int inF, int outF, int r, int seed) =>
        (TestUtil.Random(n * inF, seed), TestUtil.Random(r * inF, seed + 1), TestUtil.Random(outF * r, seed + 2));

    private static void CheckCase(int n, int inF, int outF, int r, int[]? rows, float dropout, bool bias, SimdPath path, int threads)
    {
        int m = rows?.Length ?? n;
        var (x, a, b) = Operands(n, inF, outF, r, 1);
        var biasValues = bias ? TestUtil.Random(outF, 4) : [];
        var y0 = TestUtil.Random(n * outF, 5);
        var dy = TestUtil.Random(n * outF, 6);
        const float scale = 1.75f;
        const ulong seed = 99;
        var options = new LoraOptions(dropout, seed, new KernelOptions(threads, path));
        string what = $"n {n} in {inF} out {outF} r {r} rows {(rows == null ? "all" : string.Join(",", rows))} p {dropout} {path} t{threads}";

        var (yRef, hRef) = LoraBranchReference.Forward(TestUtil.ToDouble(x), rows, TestUtil.ToDouble(a), TestUtil.ToDouble(b),
            TestUtil.ToDouble(biasValues), scale, TestUtil.ToDouble(y0), n, inF, outF, r, dropout, seed);
        var y = (float[])y0.Clone();
        var h = Enumerable.Repeat(float.NaN, m * r).ToArray();
        CpuLoraBranch.ForwardAccumulate(x, rows, a, b, biasValues, scale, y, h, n, inF, outF, r, options);

        // h: fp32 dots of length in over |x·a| ≤ 1/(1 − p); y: dots of length r over |s·h·b| plus two adds.
        double keep = 1.0 / (1.0 - dropout);
        double hTol = 2 * (inF + 16) * U * inF * keep;
        TestUtil.AssertClose(h, hRef, hTol, 1e-6, "h " + what);
        TestUtil.AssertClose(y, yRef, (hTol * r * scale) + (4 * (r + 16) * U * scale * inF * keep * r), 1e-6, "y " + what);

        var (dxRef, daRef, dbRef) = LoraBranchReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), rows, TestUtil.ToDouble(h),
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, seed);
        var dx = Enumerable.Repeat(float.NaN, n * inF).ToArray();
        var da = Enumerable.Repeat(float.NaN, r * inF).ToArray();
        var db = Enumerable.Repeat(float.NaN, outF * r).ToArray();
        CpuLoraBranch.Backward(dy, x, rows, h, a, b, scale, dx, da, db, n, inF, outF, r, options);

        double hMax = hRef.Select(Math.Abs).DefaultIfEmpty(0).Max();
        double dhTol = 4 * (outF + 16) * U * scale * outF;
        double dhMax = scale * outF;
        TestUtil.AssertClose(db, dbRef, 4 * (m + 16) * U * scale * m * Math.Max(1, hMax), 1e-6, "db " + what);
        TestUtil.AssertClose(da, daRef, (dhTol * m * keep) + (4 * (m + 16) * U * dhMax * m * keep), 1e-6, "da " + what);
        TestUtil.AssertClose(dx, dxRef, ((dhTol * r) + (4 * (r + 16) * U * dhMax * r)) * keep, 1e-6, "dx " + what);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (var (n, inF, outF, r) in new[] { (1, 1, 1, 1), (5, 17, 9, 3), (13, 70, 33, 5), (40, 33, 65, 8) })
        {
            int[] subset = [.. Enumerable.Range(0, n).Where(i => i % 3 != 1).Reverse()];
            foreach (var rows in new[] { null, subset })
            {
                CheckCase(n, inF, outF, r, rows, 0f, bias: false, path, threads);
                CheckCase(n, inF, outF, r, rows, 0.3f, bias: true, path, threads);
            }
        }
    }

    [Fact]
    public void EmptyBranchAndSkippedGradients()
    {
        const int n = 4, inF = 6, outF = 5, r = 2;
        var (x, a, b) = Operands(n, inF, outF, r, 7);
        var dy = TestUtil.Random(n * outF, 10);

        // No rows: y is untouched, every gradient is zero.
        var y = TestUtil.Random(n * outF, 11);
        var before = (float[])y.Clone();
        CpuLoraBranch.ForwardAccumulate(x, [], a, b, [], 1f, y, [], n, inF, outF, r);
        Assert.Equal(before, y);
        var dx = Enumerable.Repeat(float.NaN, n * inF).ToArray();
        var da = Enumerable.Repeat(float.NaN, r * inF).ToArray();
        var db = Enumerable.Repeat(float.NaN, outF * r).ToArray();
        CpuLoraBranch.Backward(dy, x, [], [], a, b, 1f, dx, da, db, n, inF, outF, r);
        Assert.All(dx.Concat(da).Concat(db), v => Assert.Equal(0f, v));

        // Only db (x may then be empty), then only dx: each equals the full backward's.
        var h = new float[n * r];
        CpuLoraBranch.ForwardAccumulate(x, null, a, b, [], 1f, new float[n * outF], h, n, inF, outF, r);
        var full = (Dx: new float[n * inF], Da: new float[r * inF], Db: new float[outF * r]);
        CpuLoraBranch.Backward(dy, x, null, h, a, b, 1f, full.Dx, full.Da, full.Db, n, inF, outF, r);
        var onlyDb = new float[outF * r];
        CpuLoraBranch.Backward(dy, [], null, h, a, b, 1f, [], [], onlyDb, n, inF, outF, r);
        Assert.Equal(full.Db, onlyDb);
        var onlyDx = new float[n * inF];
        CpuLoraBranch.Backward(dy, [], null, h, a, b, 1f, onlyDx, [], [], n, inF, outF, r);
        Assert.Equal(full.Dx, onlyDx);
    }

    [Fact]
    public void AllRowsEqualLoraMatmulWithAZeroBase()
    {
        const int n = 7, inF = 19, outF = 11, r = 3;
        var (x, a, b) = Operands(n, inF, outF, r, 12);
        var options = new LoraOptions(0.25f, 5);
        var hMatmul = new float[n * r];
        var yMatmul = new float[n * outF];
        LoraMatmul.Forward(x, WeightOperand.F32(new float[outF * inF], outF, inF), [], a, b, 0.5f, yMatmul, hMatmul, n, inF, outF, r, options);
        var h = new float[n * r];
        CpuLoraBranch.ForwardAccumulate(x, null, a, b, [], 0.5f, new float[n * outF], h, n, inF, outF, r, options);
        TestUtil.AssertClose(h, hMatmul, TestUtil.DotAtol(inF) * inF * 2, 1e-6, "h (same mask as LoraMatmul)");
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var x = new float[8];
        var a = new float[4];
        var b = new float[4];
        var y = new float[8];
        var h = new float[4];
        var e = Assert.Throws<ArgumentException>(() => CpuLoraBranch.ForwardAccumulate(x, [0, 4], a, b, [], 1f, y, h, 4, 2, 2, 2));
        Assert.Contains("rows[1] = 4 is outside [0, 4)", e.Message);
        e = Assert.Throws<ArgumentException>(() => CpuLoraBranch.ForwardAccumulate(x, [2, 2], a, b, [], 1f, y, h, 4, 2, 2, 2));
        Assert.Contains("rows[1] = 2 appears twice", e.Message);
        e = Assert.Throws<ArgumentException>(() => CpuLoraBranch.ForwardAccumulate(x, [1, 2], a, b, [], 1f, y, new float[8], 4, 2, 2, 2));
        Assert.Equal("h", e.ParamName);
        Assert.Contains("h has length 8; expected 4 (m·rank (m = rows of the branch))", e.Message);
        e = Assert.Throws<ArgumentException>(() => CpuLoraBranch.Backward(y, x, null, new float[8], a, b, 1f, [], [], [], 4, 2, 2, 2, new LoraOptions(1f)));
        Assert.Equal("options", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => CpuLoraBranch.Backward(y, x, null, new float[8], a, b, 1f, new float[5], [], [], 4, 2, 2, 2));
        Assert.Equal("dx", e.ParamName);
    }
}
