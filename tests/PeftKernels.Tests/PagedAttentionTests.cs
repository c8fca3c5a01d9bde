using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

/// <summary>
/// Decode attention over a paged sequence equals the double reference (and the contiguous CPU kernel) on the same
/// K/V, on every SIMD path, at block boundaries, with GQA and MHA, and with scores large enough that the merge of
/// blocks must rescale; a sequence that shares its blocks reads exactly what an unshared copy reads.
/// </summary>
public class PagedAttentionTests
{
    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>heads, kvHeads, headDim, blockSize, length, q range.</summary>
    private static readonly (int H, int Hkv, int D, int Bs, int L, float QRange)[] Cases =
    [
        (1, 1, 1, 1, 5, 1f),      // blocks of one position
        (4, 2, 17, 16, 1, 1f),
        (4, 2, 17, 16, 15, 1f),
        (4, 2, 17, 16, 16, 1f),
        (4, 2, 17, 16, 17, 1f),
        (4, 2, 17, 16, 70, 1f),
        (3, 3, 3, 4, 10, 1f),     // MHA, head dim 3
        (8, 2, 64, 16, 129, 1f),  // GQA 4:1, a Llama head
        (2, 1, 16, 8, 40, 8f),    // scores up to ~±50: merging blocks must rescale
    ];

    private static PagedSequence Build(KvBlockPool pool, float[] k, float[] v, int length, int layer)
    {
        var s = pool.CreateSequence();
        int kvDim = pool.KvDim;
        for (int p = 0; p < length; p++)
        {
            s.Append(p);
        }

        for (int l = 0; l < pool.Layers; l++)
        {
            // The other layer gets different K/V, so reading the wrong layer fails.
            var (kl, vl) = l == layer ? (k, v) : (v, k);
            s.WriteRange(l, 0, kl.AsSpan(0, length * kvDim), vl.AsSpan(0, length * kvDim));
        }

        return s;
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void DecodeMatchesContiguousAttention(SimdPath path, int threads)
    {
        var options = new KernelOptions(threads, path);
        foreach (var (h, hkv, d, bs, length, qRange) in Cases)
        {
            string what = $"H{h} Hkv{hkv} d{d} bs{bs} L{length} {path}×{threads}";
            var q = TestUtil.Random(h * d, length, qRange);
            var k = TestUtil.Random(length * hkv * d, length + 1);
            var v = TestUtil.Random(length * hkv * d, length + 2);
            float scale = qRange == 1f ? 1f / MathF.Sqrt(d) : 1f;
            var pool = new KvBlockPool(2, hkv, d, bs, ((length + bs - 1) / bs) + 1);
            var s = Build(pool, k, v, length, 1);
            var o = new float[h * d];
            PagedAttention.Decode(q, s, 1, o, h, scale, options);

            var (expected, _) = AttentionReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), 1, 1, length, h, hkv, d, scale);
            double maxAbs = expected.Max(Math.Abs);
            TestUtil.AssertClose(o, expected, 1e-5 * maxAbs, 1e-5, "paged vs reference " + what);

            var contiguous = new float[h * d];
            Attention.Forward(q, k, v, contiguous, new float[h], 1, 1, length, h, hkv, d, scale, options);
            TestUtil.AssertClose(o, contiguous, 2e-5 * maxAbs, 2e-5, "paged vs contiguous kernel " + what);
        }
    }

    [Fact]
    public void SharedAndForkedSequencesAttendExactlyAsAnUnsharedCopy()
    {
        const int h = 4, hkv = 2, d = 8, bs = 4, length = 11;
        var k = TestUtil.Random(length * hkv * d, 7);
        var v = TestUtil.Random(length * hkv * d, 8);
        var q = TestUtil.Random(h * d, 9);
        var pool = new KvBlockPool(2, hkv, d, bs, 16);
        var a = Build(pool, k, v, length, 0);

        // B shares A's first two blocks and computes the rest itself.
        var b = pool.CreateSequence();
        int[] prompt = [.. Enumerable.Range(0, length)];
        int cached = b.SharePrefix(prompt);
        Assert.Equal(8, cached);
        for (int p = cached; p < length; p++)
        {
            b.Append(p);
        }

        b.WriteRange(0, cached, k.AsSpan(cached * hkv * d), v.AsSpan(cached * hkv * d));
        b.WriteRange(1, cached, v.AsSpan(cached * hkv * d), k.AsSpan(cached * hkv * d));
        var fork = a.Fork();
        Assert.Equal(3, pool.SharedBlocks); // A's three blocks (the first two also B's)
        Assert.Equal(4, pool.UsedBlocks); // and B's own last block

        var alone = Build(new KvBlockPool(2, hkv, d, bs, 16), k, v, length, 0);
        var expected = new float[h * d];
        PagedAttention.Decode(q, alone, 0, expected, h, 1f / MathF.Sqrt(d));
        foreach (var s in new[] { a, b, fork })
        {
            var o = new float[h * d];
            PagedAttention.Decode(q, s, 0, o, h, 1f / MathF.Sqrt(d));
            Assert.Equal(expected, o);
        }
    }

    [Fact]
    public void BadInputGetsClearMessages()
    {
        var pool = new KvBlockPool(2, 2, 4, 4, 4);
        var s = pool.CreateSequence();
        var o = new float[16];
        Assert.Contains("every position of layer 0 written: the sequence has 0", Assert.Throws<ArgumentException>(() => PagedAttention.Decode(new float[16], s, 0, o, 4, 1f)).Message);
        s.Append(1);
        s.Write(0, 0, new float[8], new float[8]);
        Assert.Contains("layer 1 written: the sequence has 1 positions, the layer 0", Assert.Throws<ArgumentException>(() => PagedAttention.Decode(new float[16], s, 1, o, 4, 1f)).Message);
        Assert.Contains("positive multiple of the pool's kvHeads 2; got 3", Assert.Throws<ArgumentException>(() => PagedAttention.Decode(new float[12], s, 0, new float[12], 3, 1f)).Message);
        Assert.Contains("= 16 floats; got q 15, o 16", Assert.Throws<ArgumentException>(() => PagedAttention.Decode(new float[15], s, 0, o, 4, 1f)).Message);
        Assert.Contains("layer must be in [0, 2); got 2", Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttention.Decode(new float[16], s, 2, o, 4, 1f)).Message);
        s.Free();
        Assert.Throws<ObjectDisposedException>(() => PagedAttention.Decode(new float[16], s, 0, o, 4, 1f));
    }
}
