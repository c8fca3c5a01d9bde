// PagedDecodeAttention.Row against the double reference (AttentionReference, one query that sees every
// key) over the positions gathered from the pools into contiguous K, V: lengths 1, blockSize − 1,
// blockSize, several blocks with a partial last one, runs of 64 inside a long block; a shuffled block
// table with unused blocks between; GQA 12/4 and MHA 8/8; head dims 64, 40, 72; head ranges (other
// heads untouched); every SIMD path. NaN keys or values at a visible position give the reference's
// NaN pattern; and no allocation once warm.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class PagedDecodeAttentionTests
{
    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    private sealed record Cache(float[] Keys, float[] Values, int[] Table, int BlockSize, int KvDim);

    /// <summary>A pool of blocks with random keys and values; the sequence's blocks are a shuffled subset of it.</summary>
    private static Cache MakeCache(int length, int blockSize, int kvDim, int seed)
    {
        int blocks = (length + blockSize - 1) / blockSize, poolBlocks = (2 * blocks) + 1;
        var rng = new Random(seed);
        var table = Enumerable.Range(0, poolBlocks).OrderBy(_ => rng.Next()).Take(blocks).ToArray();
        return new Cache(TestUtil.Random(poolBlocks * blockSize * kvDim, seed + 1, 2f), TestUtil.Random(poolBlocks * blockSize * kvDim, seed + 2),
            table, blockSize, kvDim);
    }

    /// <summary>Positions 0..length − 1 of a pool gathered into [length, kvDim].</summary>
    private static double[] Gather(float[] pool, Cache c, int length)
    {
        var dense = new double[length * c.KvDim];
        for (int p = 0; p < length; p++)
        {
            long src = (((long)c.Table[p / c.BlockSize] * c.BlockSize) + (p % c.BlockSize)) * c.KvDim;
            for (int e = 0; e < c.KvDim; e++)
            {
                dense[(p * c.KvDim) + e] = pool[src + e];
            }
        }

        return dense;
    }

    private static (float[] O, double[] Expected) RunBoth(Cache c, float[] q, int length, int heads, int kvHeads, int headDim, int h0, int h1, SimdPath path)
    {
        float scale = 1f / MathF.Sqrt(headDim);
        var o = Enumerable.Repeat(float.NaN, heads * headDim).ToArray();
        PagedDecodeAttention.Row(q, c.Keys, c.Values, c.Table, c.BlockSize, length, heads, kvHeads, headDim, h0, h1, scale, o, path);
        var (expected, _) = AttentionReference.Forward(TestUtil.ToDouble(q), Gather(c.Keys, c, length), Gather(c.Values, c, length),
            1, 1, length, heads, kvHeads, headDim, scale);
        return (o, expected);
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void MatchesReferenceOverGatheredPositions(SimdPath path)
    {
        int seed = 0;
        // 40 heads: more than one group of 32 query heads (PagedDecodeAttention.HeadGroup), split inside a kv head's group of 5.
        foreach (var (heads, kvHeads) in new[] { (12, 4), (8, 8), (40, 8) })
        {
            foreach (int headDim in new[] { 64, 40, 72 })
            {
                foreach (int blockSize in new[] { 16, 128 })
                {
                    foreach (int length in new[] { 1, blockSize - 1, blockSize, (3 * blockSize) + 5, blockSize == 128 ? 300 : 77 })
                    {
                        var c = MakeCache(length, blockSize, kvHeads * headDim, seed += 7);
                        var q = TestUtil.Random(heads * headDim, seed + 3, 2f);
                        foreach (var (h0, h1) in new[] { (0, heads), (1, heads - 2) })
                        {
                            var (o, expected) = RunBoth(c, q, length, heads, kvHeads, headDim, h0, h1, path);
                            string what = $"heads {heads}/{kvHeads} d {headDim} block {blockSize} length {length} range [{h0},{h1})";
                            for (int h = 0; h < heads; h++)
                            {
                                for (int e = 0; e < headDim; e++)
                                {
                                    int i = (h * headDim) + e;
                                    if (h >= h0 && h < h1)
                                    {
                                        Assert.True(Math.Abs(o[i] - expected[i]) <= 2e-6 + (2e-5 * Math.Abs(expected[i])),
                                            $"{what}: o[{h},{e}] = {o[i]}, reference {expected[i]}");
                                    }
                                    else
                                    {
                                        Assert.True(float.IsNaN(o[i]), $"{what}: head {h} outside the range was written");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void NonFiniteKeysAndValuesPropagateAsTheReference(SimdPath path)
    {
        const int heads = 12, kvHeads = 4, headDim = 40, blockSize = 16, length = 37;
        int seed = 100;
        foreach (bool poisonKey in new[] { true, false })
        {
            foreach (float poison in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            {
                foreach (int position in new[] { 0, 20, length - 1 })
                {
                    var c = MakeCache(length, blockSize, kvHeads * headDim, seed += 3);
                    var pool = poisonKey ? c.Keys : c.Values;
                    long at = (((((long)c.Table[position / blockSize] * blockSize) + (position % blockSize)) * kvHeads) + 1) * headDim; // kv head 1
                    pool[at + 5] = poison;
                    var q = TestUtil.Random(heads * headDim, seed + 1);
                    var (o, expected) = RunBoth(c, q, length, heads, kvHeads, headDim, 0, heads, path);
                    NonFiniteAttentionTests.AssertPattern(o, expected, 1e-4, $"{(poisonKey ? "key" : "value")} {poison} at position {position}");
                    if (float.IsNaN(poison))
                    {
                        // Heads 3..5 read kv head 1: a NaN key poisons their whole rows, a NaN value their element 5; heads 0..2 stay finite.
                        for (int h = 3; h < 6; h++)
                        {
                            Assert.All(o.AsSpan(h * headDim, headDim).ToArray(), v => Assert.True(float.IsNaN(v) || !poisonKey));
                            Assert.True(float.IsNaN(o[(h * headDim) + 5]));
                        }

                        Assert.All(o.AsSpan(0, 3 * headDim).ToArray(), v => Assert.True(float.IsFinite(v)));
                    }
                }
            }
        }
    }

    [Fact]
    public void NoAllocationOnceWarm()
    {
        const int heads = 12, kvHeads = 4, headDim = 64, blockSize = 16, length = 256;
        var c = MakeCache(length, blockSize, kvHeads * headDim, 9);
        var q = TestUtil.Random(heads * headDim, 10);
        var o = new float[heads * headDim];
        long bytes = ZeroAllocation.OnThisThread(() =>
            PagedDecodeAttention.Row(q, c.Keys, c.Values, c.Table, blockSize, length, heads, kvHeads, headDim, 0, heads, 0.125f, o, SimdPath.Auto));
        Assert.Equal(0, bytes);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var c = MakeCache(20, 8, 8, 1);
        var q = new float[16];
        var o = new float[16];
        void Call(int[] table, int length = 20, int heads = 4, int kvHeads = 2, int h0 = 0, int h1 = 4, float[]? qq = null) =>
            PagedDecodeAttention.Row(qq ?? q, c.Keys, c.Values, table, 8, length, heads, kvHeads, 4, h0, h1, 0.5f, o, SimdPath.Auto);

        Assert.Equal("heads", Assert.Throws<ArgumentException>(() => Call(c.Table, heads: 3, kvHeads: 2)).ParamName);
        Assert.Equal("length", Assert.Throws<ArgumentException>(() => Call(c.Table, length: 0)).ParamName);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => Call(c.Table, qq: new float[15])).ParamName);
        Assert.Equal("h1", Assert.Throws<ArgumentOutOfRangeException>(() => Call(c.Table, h0: 2, h1: 5)).ParamName);
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => Call(c.Table[..2])).ParamName);
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => Call([0, 1, 99])).ParamName);
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => Call([0, -1, 2])).ParamName);
    }
}
