// The bf16 KV cache (EngineOptions.KvCache = BFloat16, `peft generate --kv-cache bf16`):
//   - PagedDecodeAttention.Row over bf16 pools equals the fp32 overload over the exactly widened pools bit for bit
//     (GQA 12/4 and 40/8 across two head groups, MHA 8/8; head dims 64, 40, 72 and 24, below two vector widths;
//     lengths 1, 15, 16, 53, 77 in blocks of 16 and 1, 53, 127, 128, 300 in blocks of 128; a head range leaving other heads untouched; every SIMD path);
//   - against the double reference over the unrounded fp32 cache its error stays within what rounding K and V to
//     bf16 gives (and is not zero: the rounding happens);
//   - KvBlockPool stores Bf16.FromSingle of each element, copies blocks on write, halves BytesPerBlock, and its fp32 views
//     throw naming the storage;
//   - the engine's forward (a 9-token prompt chunk through the widened gather, then decode steps through the bf16 kernel)
//     stays close to the reference model's logits, and differs from the fp32 cache's.
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public sealed class Bf16KvCacheTests
{
    public static TheoryData<SimdPath> Paths() => [.. TestUtil.Paths];

    private static ushort[] Round(float[] x) => [.. x.Select(Bf16.FromSingle)];

    private static float[] Widen(ushort[] x) => [.. x.Select(Bf16.ToSingle)];

    [Theory]
    [MemberData(nameof(Paths))]
    public void Bf16PoolsGiveTheFp32KernelOnTheWidenedPoolsBitForBit(SimdPath path)
    {
        int seed = 0;
        foreach (var (heads, kvHeads) in new[] { (12, 4), (8, 8), (40, 8) })
        {
            foreach (int headDim in new[] { 64, 40, 72, 24 })
            {
                foreach (int blockSize in new[] { 16, 128 })
                {
                    foreach (int length in new[] { 1, blockSize - 1, blockSize, 53, blockSize == 128 ? 300 : 77 })
                    {
                        int kvDim = kvHeads * headDim, blocks = (length + blockSize - 1) / blockSize, poolBlocks = (2 * blocks) + 1;
                        var rng = new Random(seed += 5);
                        var table = Enumerable.Range(0, poolBlocks).OrderBy(_ => rng.Next()).Take(blocks).ToArray();
                        var keys = Round(TestUtil.Random(poolBlocks * blockSize * kvDim, seed + 1, 2f));
                        var values = Round(TestUtil.Random(poolBlocks * blockSize * kvDim, seed + 2));
                        var q = TestUtil.Random(heads * headDim, seed + 3, 2f);
                        int h0 = 1, h1 = heads - 2;
                        float scale = 1f / MathF.Sqrt(headDim);
                        var bf16 = Enumerable.Repeat(float.NaN, heads * headDim).ToArray();
                        var fp32 = Enumerable.Repeat(float.NaN, heads * headDim).ToArray();
                        PagedDecodeAttention.Row(q, keys, values, table, blockSize, length, heads, kvHeads, headDim, h0, h1, scale, bf16, path);
                        PagedDecodeAttention.Row(q, Widen(keys), Widen(values), table, blockSize, length, heads, kvHeads, headDim, h0, h1, scale, fp32, path);
                        for (int i = 0; i < bf16.Length; i++)
                        {
                            int h = i / headDim;
                            Assert.True(h >= h0 && h < h1 ? BitConverter.SingleToInt32Bits(bf16[i]) == BitConverter.SingleToInt32Bits(fp32[i]) : float.IsNaN(bf16[i]),
                                $"heads {heads}/{kvHeads} d {headDim} block {blockSize} length {length}: o[{i}] = {bf16[i]:R}, fp32 kernel on the widened pools {fp32[i]:R}");
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Bf16PoolsStayWithinTheRoundingOfTheFp32Reference(SimdPath path)
    {
        const int heads = 12, kvHeads = 4, headDim = 64, blockSize = 16, length = 77, kvDim = kvHeads * headDim;
        int blocks = (length + blockSize - 1) / blockSize;
        var table = Enumerable.Range(0, blocks).Reverse().ToArray();
        var keys = TestUtil.Random(blocks * blockSize * kvDim, 11, 2f);
        var values = TestUtil.Random(blocks * blockSize * kvDim, 12);
        var q = TestUtil.Random(heads * headDim, 13, 2f);
        float scale = 1f / MathF.Sqrt(headDim);
        var o = new float[heads * headDim];
        PagedDecodeAttention.Row(q, Round(keys), Round(values), table, blockSize, length, heads, kvHeads, headDim, 0, heads, scale, o, path);
        var denseK = new double[length * kvDim];
        var denseV = new double[length * kvDim];
        for (int p = 0; p < length; p++)
        {
            for (int e = 0; e < kvDim; e++)
            {
                long src = (((long)table[p / blockSize] * blockSize) + (p % blockSize)) * kvDim;
                denseK[(p * kvDim) + e] = keys[src + e];
                denseV[(p * kvDim) + e] = values[src + e];
            }
        }

        var (expected, _) = AttentionReference.Forward(TestUtil.ToDouble(q), denseK, denseV, 1, 1, length, heads, kvHeads, headDim, scale);
        // bf16 keeps 8 significant bits: each K, V element moves by at most 2⁻⁹ relative. Scores s = scale·q·k move by at most
        // scale·Σ|q||k|·2⁻⁹ (≤ ~0.35 here), so probabilities by a factor e^{±2·that} at worst; the outputs (values in [−1, 1])
        // stay within ~0.1 in the worst case and far less in practice. The bound below is the worst case; the second check
        // shows the rounding is real (an fp32 read of the pools would give ~1e-6).
        double worst = 0;
        for (int i = 0; i < o.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(o[i] - expected[i]));
        }

        Assert.True(worst < 0.05, $"bf16 cache: max |o − reference| = {worst}");
        Assert.True(worst > 1e-4, $"bf16 cache: max |o − reference| = {worst}: the keys and values were not rounded to bf16");
    }

    [Fact]
    public void PoolStoresRoundedBitsAndCopiesOnWrite()
    {
        const int layers = 2, kvHeads = 2, headDim = 8, blockSize = 4;
        var pool = new KvBlockPool(layers, kvHeads, headDim, blockSize, 6, KvCacheType.BFloat16);
        var fp32 = new KvBlockPool(layers, kvHeads, headDim, blockSize, 6);
        Assert.Equal(KvCacheType.BFloat16, pool.CacheType);
        Assert.Equal(fp32.BytesPerBlock / 2, pool.BytesPerBlock);
        var s = pool.CreateSequence();
        var keys = TestUtil.Random(6 * pool.KvDim, 1, 3f);
        var values = TestUtil.Random(6 * pool.KvDim, 2, 3f);
        keys[0] = 1f + (1f / 256f); // an exact tie between two bf16 values: rounds to the even one, 1
        keys[1] = 1f + (3f / 256f); // a tie rounding up to the even 1 + 2/128
        for (int p = 0; p < 6; p++)
        {
            s.Append(p);
        }

        for (int l = 0; l < layers; l++)
        {
            s.WriteRange(l, 0, keys, values);
        }

        Assert.Equal(0x3F80, pool.KeyBlockBf16(1, s.BlockTable[0])[0]);
        Assert.Equal(0x3F82, pool.KeyBlockBf16(1, s.BlockTable[0])[1]);
        for (int p = 0; p < 6; p++)
        {
            int block = s.BlockTable[p / blockSize], slot = p % blockSize;
            for (int e = 0; e < pool.KvDim; e++)
            {
                Assert.Equal(Bf16.FromSingle(keys[(p * pool.KvDim) + e]), pool.KeyBlockBf16(1, block)[(slot * pool.KvDim) + e]);
                Assert.Equal(Bf16.FromSingle(values[(p * pool.KvDim) + e]), pool.ValueBlockBf16(0, block)[(slot * pool.KvDim) + e]);
            }
        }

        // A fork shares the partly filled last block; appending to it copies that block first (every layer, bf16 bits).
        var fork = s.Fork();
        fork.Append(99);
        int last = s.BlockTable[1], copy = fork.BlockTable[1];
        Assert.NotEqual(last, copy);
        for (int l = 0; l < layers; l++)
        {
            Assert.Equal(pool.KeyBlockBf16(l, last)[..(2 * pool.KvDim)].ToArray(), pool.KeyBlockBf16(l, copy)[..(2 * pool.KvDim)].ToArray());
            Assert.Equal(pool.ValueBlockBf16(l, last)[..(2 * pool.KvDim)].ToArray(), pool.ValueBlockBf16(l, copy)[..(2 * pool.KvDim)].ToArray());
        }

        Assert.Contains("BFloat16", Assert.Throws<InvalidOperationException>(() => s.KeyBlock(0, 0).ToArray()).Message);
        Assert.Contains("BFloat16", Assert.Throws<InvalidOperationException>(() => pool.LayerValues(0)).Message);
        Assert.Contains("not bf16", Assert.Throws<InvalidOperationException>(() => fp32.LayerKeysBf16(0)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new KvBlockPool(1, 1, 8, 4, 4, (KvCacheType)7));
        Assert.Contains("KvCache", Assert.Throws<ArgumentException>(() => new EngineOptions { KvCache = (KvCacheType)7 }.Validate(64)).Message);
    }

    [Fact]
    public void EngineForwardWithBf16CacheStaysCloseToTheReference()
    {
        using var fx = new EngineFixture();
        var model = fx.NewModel();
        var c = model.Config;
        var prompt = new[] { 3, 1, 4, 1, 5, 9, 2, 6, 5 };
        float[][] Run(KvCacheType type)
        {
            var options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 4, KvCache = type };
            using var engine = fx.Engine(options);
            var forward = new BatchForward(model, 64, 4, 64, options);
            var pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, 4, 32, type);
            var (table, slot) = engine.TableAndSlot(null);
            var sequence = pool.CreateSequence();
            var batch = new StepBatch(64, 4);
            var steps = new List<float[]>();
            var tokens = prompt.ToList();
            foreach (int t in prompt)
            {
                sequence.Append(t);
            }

            batch.Add(sequence, prompt, 0, slot, wantsLogits: true);
            steps.Add(forward.Run(batch, table).ToArray());
            for (int step = 0; step < 6; step++)
            {
                int token = (tokens.Count * 7) % fx.Vocab;
                tokens.Add(token);
                sequence.Append(token);
                batch.Clear();
                batch.Add(sequence, [token], tokens.Count - 1, slot, wantsLogits: true);
                steps.Add(forward.Run(batch, table).ToArray());
            }

            return [.. steps];
        }

        var bf16 = Run(KvCacheType.BFloat16);
        var fp32 = Run(KvCacheType.Float32);
        var all = prompt.Concat(Enumerable.Range(0, 6).Select(i => ((prompt.Length + i) * 7) % fx.Vocab)).ToArray();
        var reference = fx.Logits(all, null);
        double moved = 0;
        for (int step = 0; step < bf16.Length; step++)
        {
            int row = prompt.Length - 1 + step;
            var expected = reference.AsSpan(row * fx.Vocab, fx.Vocab);
            double scale = 1, worst = 0;
            for (int j = 0; j < fx.Vocab; j++)
            {
                scale = Math.Max(scale, Math.Abs(expected[j]));
                worst = Math.Max(worst, Math.Abs(expected[j] - bf16[step][j]));
                moved = Math.Max(moved, Math.Abs(fp32[step][j] - bf16[step][j]));
            }

            Assert.True(worst <= 2e-2 * scale, $"step {step}: max |logit difference| {worst} with the bf16 cache (max |logit| {scale})");
        }

        Assert.True(moved > 1e-6, "the bf16 cache gave the fp32 cache's logits exactly: nothing was rounded");
    }
}
