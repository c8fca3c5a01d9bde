using PeftKernels.Engine;

namespace PeftKernels.Tests;

/// <summary>
/// The paged KV cache: block accounting, block boundaries, prefix sharing, copy on write, freeing (a seeded random
/// test that nothing leaks), running out of blocks and bad input. K/V rows are a function of (layer, position, token),
/// so a sequence's expected contents are known and a shared block must read the same as an unshared copy.
/// </summary>
public class PagedKvCacheTests
{
    private const int Layers = 3, KvHeads = 2, HeadDim = 3, KvDim = KvHeads * HeadDim;

    /// <summary>The K (or V) row a model would write for <paramref name="token"/> at <paramref name="position"/> in <paramref name="layer"/>.</summary>
    internal static float[] Row(int layer, int position, int token, bool value)
    {
        var row = new float[KvDim];
        for (int i = 0; i < KvDim; i++)
        {
            row[i] = (layer * 1000) + (position * 10) + (token * 0.01f) + (i * 0.0001f) + (value ? 0.5f : 0f);
        }

        return row;
    }

    /// <summary>Appends tokens[from..] and writes their K/V in every layer (a prefill).</summary>
    internal static void Fill(PagedSequence s, ReadOnlySpan<int> tokens, int from = 0)
    {
        int start = s.Length;
        for (int p = from; p < tokens.Length; p++)
        {
            s.Append(tokens[p]);
        }

        for (int l = 0; l < Layers; l++)
        {
            for (int p = start; p < s.Length; p++)
            {
                s.Write(l, p, Row(l, p, s.TokenAt(p), false), Row(l, p, s.TokenAt(p), true));
            }
        }
    }

    private static void AssertContents(PagedSequence s)
    {
        for (int l = 0; l < Layers; l++)
        {
            for (int p = 0; p < s.Length; p++)
            {
                Assert.Equal(Row(l, p, s.TokenAt(p), false), s.KeyAt(l, p).ToArray());
                Assert.Equal(Row(l, p, s.TokenAt(p), true), s.ValueAt(l, p).ToArray());
            }
        }
    }

    private static KvBlockPool Pool(int blockSize = 4, int blocks = 16) => new(Layers, KvHeads, HeadDim, blockSize, blocks);

    private static int[] Tokens(int count, int seed) => [.. Enumerable.Range(0, count).Select(i => ((i * 7) + (seed * 13)) % 50)];

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(8)]
    [InlineData(14)]
    public void BlockBoundariesAllocateCeilLengthOverBlockSize(int length)
    {
        var pool = Pool();
        var s = pool.CreateSequence();
        Fill(s, Tokens(length, 1));
        int blocks = (length + 3) / 4;
        Assert.Equal(length, s.Length);
        Assert.Equal(blocks, s.BlockTable.Count);
        Assert.Equal(blocks, pool.UsedBlocks);
        Assert.Equal(16 - blocks, pool.FreeBlocks);
        Assert.Equal(length - ((blocks - 1) * 4), s.TokensInBlock(blocks - 1));
        Assert.Equal(s.TokensInBlock(blocks - 1) * KvDim, s.KeyBlock(Layers - 1, blocks - 1).Length);
        Assert.Equal(blocks, s.BlockTable.Distinct().Count());
        AssertContents(s);
        s.Free();
        Assert.Equal(0, pool.UsedBlocks);
        Assert.Equal(16, pool.FreeBlocks);
        Assert.Equal(0, pool.IndexedBlocks);
        s.Free(); // idempotent
        Assert.Equal(16, pool.FreeBlocks);
    }

    [Fact]
    public void SequencesWithACommonPromptShareItsFullBlocks()
    {
        var pool = Pool();
        var prompt = Tokens(11, 2);
        var a = pool.CreateSequence();
        Fill(a, prompt);
        Assert.Equal(3, pool.UsedBlocks);
        Assert.Equal(2, pool.IndexedBlocks); // the two full blocks

        var b = pool.CreateSequence();
        Assert.Equal(8, b.SharePrefix(prompt));
        Fill(b, prompt, 8);
        Assert.Equal(a.BlockTable.Take(2), b.BlockTable.Take(2));
        Assert.NotEqual(a.BlockTable[2], b.BlockTable[2]);
        Assert.Equal(4, pool.UsedBlocks); // 6 unshared
        Assert.Equal(2, pool.SharedBlocks);

        // B reads what an unshared copy in its own pool reads.
        var alone = Pool().CreateSequence();
        Fill(alone, prompt);
        for (int l = 0; l < Layers; l++)
        {
            for (int i = 0; i < 3; i++)
            {
                Assert.Equal(alone.KeyBlock(l, i).ToArray(), b.KeyBlock(l, i).ToArray());
                Assert.Equal(alone.ValueBlock(l, i).ToArray(), b.ValueBlock(l, i).ToArray());
            }
        }

        // A prompt that differs in its second block shares only the first; one of exactly two blocks keeps its last to compute.
        var other = (int[])prompt.Clone();
        other[5] = 49;
        Assert.Equal(4, pool.CreateSequence().SharePrefix(other));
        Assert.Equal(4, pool.CreateSequence().SharePrefix(prompt.AsSpan(0, 8)));
        Assert.Equal(8, pool.CreateSequence().SharePrefix(prompt.AsSpan(0, 9)));

        a.Free();
        Assert.Equal(3, pool.UsedBlocks); // A's private last block came back; B (and the probes) hold the rest
        Assert.Equal(2, pool.IndexedBlocks); // published blocks stay while any sequence holds them
        AssertContents(b);
    }

    [Fact]
    public void ABlockIsSharedOnlyOnceEveryLayerHasWrittenIt()
    {
        var pool = Pool();
        var prompt = Tokens(6, 3);
        var a = pool.CreateSequence();
        for (int p = 0; p < 6; p++)
        {
            a.Append(prompt[p]);
        }

        for (int l = 0; l < Layers - 1; l++)
        {
            for (int p = 0; p < 6; p++)
            {
                a.Write(l, p, Row(l, p, prompt[p], false), Row(l, p, prompt[p], true));
            }
        }

        Assert.Equal(0, pool.CreateSequence().SharePrefix(prompt));
        for (int p = 0; p < 6; p++)
        {
            a.Write(Layers - 1, p, Row(Layers - 1, p, prompt[p], false), Row(Layers - 1, p, prompt[p], true));
        }

        Assert.Equal(4, pool.CreateSequence().SharePrefix(prompt));
        Assert.Throws<InvalidOperationException>(() => a.Write(0, 1, Row(0, 1, 0, false), Row(0, 1, 0, true)));
    }

    [Fact]
    public void APrefixLookupIsVerifiedAndEndsWithItsLastHolder()
    {
        var pool = Pool();
        var prompt = Tokens(9, 5);
        var a = pool.CreateSequence();
        Fill(a, prompt);
        ulong first = KvBlockPool.ChainHash(KvBlockPool.RootHash, prompt.AsSpan(0, 4));
        Assert.Equal(a.BlockTable[0], pool.Lookup(first, -1, prompt.AsSpan(0, 4)));

        // The same hash with other tokens or another parent (a collision) finds nothing.
        int[] other = [.. prompt[..4]];
        other[3]++;
        Assert.Equal(-1, pool.Lookup(first, -1, other));
        Assert.Equal(-1, pool.Lookup(first, a.BlockTable[1], prompt.AsSpan(0, 4)));

        var b = pool.CreateSequence();
        Assert.Equal(8, b.SharePrefix(prompt));
        a.Free();
        var c = pool.CreateSequence();
        Assert.Equal(8, c.SharePrefix(prompt)); // B still holds the blocks
        b.Free();
        c.Free();
        Assert.Equal(0, pool.IndexedBlocks);
        Assert.Equal(0, pool.CreateSequence().SharePrefix(prompt));
    }

    [Fact]
    public void AppendingToAForkCopiesTheSharedPartialBlockAndLeavesTheOtherUnchanged()
    {
        var pool = Pool();
        var a = pool.CreateSequence();
        Fill(a, Tokens(6, 4));
        var before = Enumerable.Range(0, 6).Select(p => a.KeyAt(1, p).ToArray()).ToArray();
        var b = a.Fork();
        Assert.Equal(2, pool.UsedBlocks);
        Assert.Equal(2, pool.SharedBlocks);
        Assert.Equal(2, pool.RefCount(a.BlockTable[1]));
        Assert.Throws<InvalidOperationException>(() => b.Write(0, 5, Row(0, 5, 0, false), Row(0, 5, 0, true)));

        b.Append(40);
        for (int l = 0; l < Layers; l++)
        {
            b.Write(l, 6, Row(l, 6, 40, false), Row(l, 6, 40, true));
        }

        Assert.Equal(3, pool.UsedBlocks);
        Assert.Equal(1, pool.SharedBlocks);
        Assert.Equal(a.BlockTable[0], b.BlockTable[0]);
        Assert.NotEqual(a.BlockTable[1], b.BlockTable[1]);
        Assert.Equal(6, a.Length);
        Assert.Equal(before, Enumerable.Range(0, 6).Select(p => a.KeyAt(1, p).ToArray()).ToArray());

        Fill(a, [.. Tokens(6, 4), 41], 6); // A's block is private again: no copy
        Assert.Equal(3, pool.UsedBlocks);
        Assert.Equal(Row(2, 6, 41, false), a.KeyAt(2, 6).ToArray());
        Assert.Equal(Row(2, 6, 40, false), b.KeyAt(2, 6).ToArray());
        AssertContents(a);
        AssertContents(b);
        a.Free();
        b.Free();
        Assert.Equal(16, pool.FreeBlocks);
        Assert.Equal(0, pool.SharedBlocks);
    }

    [Fact]
    public void ManyRandomSequencesLeakNoBlock()
    {
        var rng = new Random(1234);
        var pool = Pool(blockSize: 4, blocks: 40);
        var prompts = Enumerable.Range(0, 4).Select(i => Tokens(9 + (3 * i), i)).ToArray();
        var live = new List<PagedSequence>();
        int shared = 0, refused = 0;
        for (int step = 0; step < 600; step++)
        {
            int op = rng.Next(10);
            if (op < 3 || live.Count == 0)
            {
                var full = prompts[rng.Next(prompts.Length)];
                var prompt = full[..(1 + rng.Next(full.Length))];
                var s = pool.CreateSequence();
                int cached = s.SharePrefix(prompt);
                shared += cached;
                if (!TryFill(s, prompt, cached))
                {
                    refused++;
                    s.Free();
                }
                else
                {
                    live.Add(s);
                }
            }
            else if (op < 5)
            {
                int i = rng.Next(live.Count);
                live[i].Free();
                live.RemoveAt(i);
            }
            else if (op < 6)
            {
                live.Add(live[rng.Next(live.Count)].Fork());
            }
            else
            {
                var s = live[rng.Next(live.Count)];
                if (!TryFill(s, [.. Enumerable.Range(0, s.Length).Select(s.TokenAt), rng.Next(50)], s.Length))
                {
                    refused++;
                }
            }

            var counts = live.SelectMany(s => s.BlockTable).GroupBy(b => b).ToDictionary(g => g.Key, g => g.Count());
            Assert.Equal(counts.Count, pool.UsedBlocks);
            Assert.Equal(counts.Count(c => c.Value > 1), pool.SharedBlocks);
            Assert.All(counts, c => Assert.Equal(c.Value, pool.RefCount(c.Key)));
            if (live.Count > 0)
            {
                AssertContents(live[rng.Next(live.Count)]);
            }
        }

        Assert.True(shared > 0, "the random test never shared a prefix");
        Assert.True(refused > 0, "the random test never ran out of blocks");
        live.ForEach(s => s.Free());
        Assert.Equal(0, pool.UsedBlocks);
        Assert.Equal(40, pool.FreeBlocks);
        Assert.Equal(0, pool.SharedBlocks);
        Assert.Equal(0, pool.IndexedBlocks);
    }

    /// <summary>Fill with TryAppend: false (leaving the positions appended so far written) when the pool runs out.</summary>
    private static bool TryFill(PagedSequence s, ReadOnlySpan<int> tokens, int from)
    {
        int start = s.Length;
        bool ok = true;
        for (int p = from; p < tokens.Length && ok; p++)
        {
            ok = s.TryAppend(tokens[p]);
        }

        for (int l = 0; l < Layers; l++)
        {
            for (int p = start; p < s.Length; p++)
            {
                s.Write(l, p, Row(l, p, s.TokenAt(p), false), Row(l, p, s.TokenAt(p), true));
            }
        }

        return ok;
    }

    [Fact]
    public void OutOfBlocksTryAppendRefusesAndAppendThrows()
    {
        var pool = Pool(blockSize: 2, blocks: 2);
        var a = pool.CreateSequence();
        Fill(a, [1, 2, 3]);
        var b = a.Fork();
        Assert.Equal(0, pool.FreeBlocks);
        Assert.False(b.TryAppend(5)); // its copy on write finds no block: nothing changes
        Assert.Equal(3, b.Length);
        Assert.Equal(2, pool.RefCount(b.BlockTable[1]));
        Assert.Equal(2, pool.SharedBlocks);
        var ex = Assert.Throws<InvalidOperationException>(() => a.Append(4));
        Assert.Contains("out of blocks: 2 of 2", ex.Message);
        Assert.Equal(3, a.Length);
        AssertContents(a);
        AssertContents(b);
        a.Free();
        Assert.True(b.TryAppend(5)); // its last block is private now: no copy needed
        Assert.False(pool.CreateSequence().TryAppend(1));
        b.Free();
        Assert.Equal(2, pool.FreeBlocks);
    }

    [Fact]
    public void BadInputGetsClearMessages()
    {
        Assert.Contains("headDim 0", Assert.Throws<ArgumentException>(() => new KvBlockPool(1, 1, 0, 4, 4)).Message);
        Assert.Contains("largest array", Assert.Throws<ArgumentException>(() => new KvBlockPool(1, 64, 128, 16, 1 << 20)).Message);
        var pool = Pool();
        var s = pool.CreateSequence();
        Fill(s, [1, 2]);
        Assert.Contains("layer must be in [0, 3); got 3", Assert.Throws<ArgumentOutOfRangeException>(() => s.Write(3, 0, new float[KvDim], new float[KvDim])).Message);
        Assert.Contains("layer must be in [0, 3); got -1", Assert.Throws<ArgumentOutOfRangeException>(() => s.KeyAt(-1, 0)).Message);
        Assert.Contains("position must be in [0, 2)", Assert.Throws<ArgumentOutOfRangeException>(() => s.Write(0, 2, new float[KvDim], new float[KvDim])).Message);
        Assert.Contains("= 6 floats; got key 5, value 6", Assert.Throws<ArgumentException>(() => s.Write(0, 0, new float[5], new float[KvDim])).Message);
        s.Append(3);
        s.Append(4);
        Assert.Contains("write position 2 next, not 3", Assert.Throws<ArgumentOutOfRangeException>(() => s.Write(0, 3, new float[KvDim], new float[KvDim])).Message);
        Assert.Contains("layer 0 has 2", Assert.Throws<InvalidOperationException>(s.Fork).Message);
        Assert.Contains("empty sequence", Assert.Throws<InvalidOperationException>(() => s.SharePrefix([1, 2, 3])).Message);
        Assert.Contains("block index must be in [0, 1)", Assert.Throws<ArgumentOutOfRangeException>(() => s.KeyBlock(0, 1)).Message);
        Assert.Contains("block ids are in [0, 16)", Assert.Throws<ArgumentOutOfRangeException>(() => pool.RefCount(16)).Message);
        s.Free();
        Assert.Throws<ObjectDisposedException>(() => s.Append(1));
    }
}
