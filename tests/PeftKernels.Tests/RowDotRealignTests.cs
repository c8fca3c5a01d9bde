// RowDot.Dot512 (aligned loads + valignd when the weight row starts off a 64-byte boundary) against
// RowDot.Dot512Plain (the same loop with loads as they fall): equal bit for bit at every start offset
// 0..15 floats and lengths around the 16- and 64-float chunk edges, for one row and for m = 2..4 rows of x
// (RowDot.DotAdd against RowDot.DotAddPlain); within rounding of a double sum;
// never reading a value outside the row (every float around it is NaN). And DecodeGemv.Rows on every SIMD
// path gives the same bits wherever the fp32 weight sits in memory (views of one array at 16 offsets).
using System.Runtime.InteropServices;
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public unsafe class RowDotRealignTests
{
    private static readonly int[] Lengths = [1, 15, 16, 17, 31, 48, 63, 64, 65, 79, 80, 100, 127, 128, 129, 768, 2048, 2063];

    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    [Fact]
    public void EqualsPlainLoopBitForBitAtEveryOffset()
    {
        if (!KernelOptions.IsSupported(SimdPath.Vector512))
        {
            return;
        }

        const int pad = 64;
        int maxK = Lengths.Max();
        float* a = (float*)NativeMemory.AlignedAlloc((nuint)(maxK * sizeof(float)), 64);
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)((maxK + (2 * pad)) * sizeof(float)), 64);
        try
        {
            var xs = TestUtil.Random(maxK, 5, 2f);
            var ws = TestUtil.Random(maxK, 6);
            xs.CopyTo(new Span<float>(a, maxK));
            int shifted = 0;
            foreach (int k in Lengths)
            {
                for (int offset = 0; offset < 16; offset++)
                {
                    // The row at pad + offset floats from a 64-byte boundary, NaN everywhere around it.
                    new Span<float>(buffer, maxK + (2 * pad)).Fill(float.NaN);
                    float* b = buffer + pad + offset;
                    ws.AsSpan(0, k).CopyTo(new Span<float>(b, k));
                    float got = RowDot.Dot512(b, a, k);
                    float expected = RowDot.Dot512Plain(b, a, k);
                    Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(expected),
                        $"k={k} offset={offset}: Dot512 {got:R}, plain loop {expected:R}");
                    double reference = 0;
                    for (int p = 0; p < k; p++)
                    {
                        reference += (double)xs[p] * ws[p];
                    }

                    Assert.True(Math.Abs(got - reference) <= 1e-5 * (1 + k), $"k={k} offset={offset}: {got} vs double {reference}");
                    shifted += offset > 0 && k >= 16 ? 1 : 0;
                }
            }

            Assert.True(shifted > 0);
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
            NativeMemory.AlignedFree(a);
        }
    }

    [Fact]
    public void RowsEqualPlainLoopBitForBitAtEveryOffset()
    {
        // m = 1..4 rows of x against one weight row (RowDot.DotAdd, the GEMV's inner product) on the 512-bit path.
        if (!KernelOptions.IsSupported(SimdPath.Vector512))
        {
            return;
        }

        const int pad = 64;
        int maxK = Lengths.Max();
        float* a = (float*)NativeMemory.AlignedAlloc((nuint)(RowDot.MaxRows * maxK * sizeof(float)), 64);
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)((maxK + (2 * pad)) * sizeof(float)), 64);
        float* got = stackalloc float[RowDot.MaxRows];
        float* expected = stackalloc float[RowDot.MaxRows];
        try
        {
            TestUtil.Random(RowDot.MaxRows * maxK, 7, 2f).CopyTo(new Span<float>(a, RowDot.MaxRows * maxK));
            var ws = TestUtil.Random(maxK, 8);
            foreach (int k in Lengths)
            {
                for (int offset = 0; offset < 16; offset++)
                {
                    new Span<float>(buffer, maxK + (2 * pad)).Fill(float.NaN);
                    float* b = buffer + pad + offset;
                    ws.AsSpan(0, k).CopyTo(new Span<float>(b, k));
                    for (int m = 1; m <= RowDot.MaxRows; m++)
                    {
                        for (int r = 0; r < RowDot.MaxRows; r++)
                        {
                            got[r] = expected[r] = r + 0.5f;
                        }

                        RowDot.DotAdd(b, a, maxK, m, k, SimdPath.Vector512, got);
                        RowDot.DotAddPlain(b, a, maxK, m, k, SimdPath.Vector512, expected);
                        for (int r = 0; r < RowDot.MaxRows; r++)
                        {
                            Assert.True(BitConverter.SingleToInt32Bits(got[r]) == BitConverter.SingleToInt32Bits(expected[r]),
                                $"k={k} offset={offset} m={m} row {r}: {got[r]:R}, plain loop {expected[r]:R}");
                            Assert.False(float.IsNaN(got[r]), $"k={k} offset={offset} m={m} row {r} read outside the weight row");
                        }
                    }
                }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
            NativeMemory.AlignedFree(a);
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void DecodeGemvDoesNotDependOnWhereTheWeightSits(SimdPath path)
    {
        foreach (var (inF, outF) in new[] { (768, 37), (100, 9), (2048, 5) })
        {
            var w = TestUtil.Random(outF * inF, inF + outF);
            var big = new float[(outF * inF) + 16];
            for (int m = 1; m <= DecodeGemv.MaxRows; m++)
            {
                var x = TestUtil.Random(m * inF, m + 3, 2f);
                float[]? first = null;
                for (int offset = 0; offset < 16; offset++)
                {
                    Array.Fill(big, float.NaN);
                    w.CopyTo(big, offset);
                    var y = new float[m * outF];
                    DecodeGemv.Rows(x, WeightOperand.F32(big.AsMemory(offset, outF * inF), outF, inF), y, m, inF, outF, 0, outF, path);
                    Assert.DoesNotContain(y, float.IsNaN);
                    first ??= y;
                    for (int i = 0; i < y.Length; i++)
                    {
                        Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(first[i]),
                            $"{path} [{inF}->{outF}] m={m} weight offset {offset}: y[{i}] = {y[i]:R}, at offset 0 {first[i]:R}");
                    }

                    if (m == 1 && path == SimdPath.Vector512)
                    {
                        // One row on the 512-bit path is the plain loop's sum, wherever the row sits.
                        fixed (float* pw = w)
                        fixed (float* px = x)
                        {
                            for (int j = 0; j < outF; j++)
                            {
                                Assert.Equal(RowDot.Dot512Plain(pw + ((long)j * inF), px, inF), y[j]);
                            }
                        }
                    }
                }
            }
        }
    }
}
