// One sequence's view of a paged KV cache: a block table (block ids from a KvBlockPool, the same table
// for every layer) and the token id of each position. Position p lives in block table[p / blockSize]
// at slot p mod blockSize; its K (and V) in layer l is the row of kvDim = kvHeads·headDim floats
//   pool.keys[l][(table[p / blockSize]·blockSize + p mod blockSize)·kvDim ..]
// Protocol per step (prefill chunk or decode token): TryAppend/Append each new token id (reserves its
// position in every layer, allocating a block at a block boundary and copying a shared partially
// filled block first: copy on write), then, layer by layer, Write its K/V and attend (the device engine
// instead calls MarkWritten once per step and its kernels write the K/V into the device blocks). Writes within a
// layer go in position order (no gaps); a block becomes shareable (published in the pool's prefix
// index) once every layer has written all its positions. Positions in a block that another sequence
// also references, or that is published, are immutable.
// Running out of blocks: TryAppend returns false and changes nothing (a scheduler preempts or waits);
// Append throws InvalidOperationException. SharePrefix and Fork never allocate. An Unshared sequence
// never publishes its blocks (an X-LoRA sequence's two caches, InferenceEngine.XLora.cs).
namespace PeftKernels.Engine;

/// <summary>A sequence's block table over a <see cref="KvBlockPool"/>: append positions, write and read K/V per layer, share prefixes, fork, free.</summary>
public sealed class PagedSequence : IDisposable
{
    private readonly KvBlockPool pool;
    private readonly List<int> table;
    private readonly int[] written;
    private int[] tokens;
    private int hashedBlocks;
    private readonly ulong root;
    private ulong lastHash;
    private bool freed;

    internal PagedSequence(KvBlockPool pool, int expectedLength, ulong root = KvBlockPool.RootHash)
    {
        this.pool = pool;
        this.root = root;
        lastHash = root;
        tokens = new int[Math.Max(16, expectedLength)];
        table = new List<int>(Math.Max(4, (expectedLength + pool.BlockSize - 1) / pool.BlockSize));
        written = new int[pool.Layers];
    }

    /// <summary>When true, the sequence never publishes its blocks for prefix sharing (an X-LoRA sequence's caches: their K/V are not the plain prompt's).</summary>
    internal bool Unshared { get; init; }

    /// <summary>The pool the blocks come from.</summary>
    public KvBlockPool Pool => pool;

    /// <summary>Positions reserved so far (prompt plus generated tokens).</summary>
    public int Length { get; private set; }

    /// <summary>Block ids, one per <see cref="KvBlockPool.BlockSize"/> positions (the last may be partly filled).</summary>
    public IReadOnlyList<int> BlockTable => table;

    /// <summary>The block table as a span (valid until the next append).</summary>
    internal ReadOnlySpan<int> Table => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(table);

    /// <summary>True once <see cref="Free"/> (or Dispose) has returned the blocks.</summary>
    public bool IsFreed => freed;

    /// <summary>Token id at <paramref name="position"/>.</summary>
    public int TokenAt(int position)
    {
        CheckPosition(position, Length);
        return tokens[position];
    }

    /// <summary>Positions of <paramref name="layer"/> whose K/V are written (the first ones, in order).</summary>
    public int WrittenLength(int layer)
    {
        CheckLayer(layer);
        return written[layer];
    }

    /// <summary>
    /// On an empty sequence, takes the published blocks that hold the longest prefix of <paramref name="prompt"/> in full blocks
    /// (reference counts, no copy), leaving at least the prompt's last token to compute (its logits start generation).
    /// Returns the positions now cached: the caller appends and computes <paramref name="prompt"/> from there on.
    /// </summary>
    /// <exception cref="InvalidOperationException">The sequence is not empty.</exception>
    public int SharePrefix(ReadOnlySpan<int> prompt)
    {
        ObjectDisposedException.ThrowIf(freed, this);
        if (Length != 0)
        {
            throw new InvalidOperationException($"SharePrefix needs an empty sequence; this one has {Length} positions.");
        }

        int bs = pool.BlockSize;
        int maxBlocks = prompt.Length == 0 ? 0 : (prompt.Length - 1) / bs;
        int parent = -1;
        ulong hash = root;
        for (int i = 0; i < maxBlocks; i++)
        {
            var blockTokens = prompt.Slice(i * bs, bs);
            ulong next = KvBlockPool.ChainHash(hash, blockTokens);
            int block = pool.Lookup(next, parent, blockTokens, root);
            if (block < 0)
            {
                break;
            }

            pool.AddRef(block);
            table.Add(block);
            hash = next;
            parent = block;
        }

        int cached = table.Count * bs;
        EnsureTokenCapacity(cached);
        prompt[..cached].CopyTo(tokens);
        Length = cached;
        Array.Fill(written, cached);
        hashedBlocks = table.Count;
        lastHash = hash;
        return cached;
    }

    /// <summary>
    /// Reserves position <see cref="Length"/> for <paramref name="tokenId"/> in every layer: a new block at a block boundary, or a private
    /// copy of the last block when other sequences share it. Returns false, changing nothing, when the pool has no free block.
    /// </summary>
    public bool TryAppend(int tokenId)
    {
        ObjectDisposedException.ThrowIf(freed, this);
        int slot = Length % pool.BlockSize;
        if (slot == 0)
        {
            if (!pool.TryAllocate(out int block))
            {
                return false;
            }

            table.Add(block);
        }
        else
        {
            int last = table[^1];
            if (pool.RefCount(last) > 1)
            {
                if (!pool.TryAllocate(out int copy))
                {
                    return false;
                }

                pool.CopyBlock(last, copy);
                pool.Release(last);
                table[^1] = copy;
            }
        }

        EnsureTokenCapacity(Length + 1);
        tokens[Length++] = tokenId;
        return true;
    }

    /// <summary>As <see cref="TryAppend"/>, but throws when the pool is out of blocks.</summary>
    /// <exception cref="InvalidOperationException">No free block (free or preempt another sequence, or size the pool larger).</exception>
    public void Append(int tokenId)
    {
        if (!TryAppend(tokenId))
        {
            throw new InvalidOperationException(
                $"KV block pool is out of blocks: {pool.UsedBlocks} of {pool.BlockCount} blocks in use ({pool.BlockSize} positions each); " +
                $"position {Length} of this sequence needs another. Free or preempt a sequence, or create a larger pool.");
        }
    }

    /// <summary>Writes the key and value of <paramref name="position"/> in <paramref name="layer"/>, each [kvHeads · headDim].</summary>
    /// <exception cref="ArgumentException">Bad layer, position or row length.</exception>
    /// <exception cref="InvalidOperationException">The position lies in a shared or published block (immutable).</exception>
    public void Write(int layer, int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        ObjectDisposedException.ThrowIf(freed, this);
        CheckLayer(layer);
        CheckPosition(position, Length);
        if (position > written[layer])
        {
            throw new ArgumentOutOfRangeException(nameof(position), $"layer {layer} has positions [0, {written[layer]}) written; write position {written[layer]} next, not {position} (no gaps).");
        }

        int kvDim = pool.KvDim;
        if (key.Length != kvDim || value.Length != kvDim)
        {
            throw new ArgumentException($"a K/V row is kvHeads {pool.KvHeads} × headDim {pool.HeadDim} = {kvDim} floats; got key {key.Length}, value {value.Length}.");
        }

        int block = table[position / pool.BlockSize];
        if (pool.RefCount(block) > 1 || pool.IsPublished(block))
        {
            throw new InvalidOperationException($"position {position} lies in KV block {block}, which is shared with other sequences or published for prefix sharing; its K/V cannot change.");
        }

        pool.WriteRow(layer, block, position % pool.BlockSize, key, value);
        if (position == written[layer])
        {
            written[layer]++;
            if (written[layer] % pool.BlockSize == 0)
            {
                PublishCompleteBlocks();
            }
        }
    }

    /// <summary>
    /// Records that positions [<paramref name="start"/>, start + count) of every layer are being written by the device engine (its
    /// KV write kernel, enqueued right after this on the same stream, before any read): the same checks as <see cref="Write"/>
    /// (no gaps, no shared or published block), then the written lengths advance and full blocks are published.
    /// </summary>
    /// <exception cref="ArgumentException">A position is out of range or leaves a gap.</exception>
    /// <exception cref="InvalidOperationException">A position lies in a shared or published block.</exception>
    internal void MarkWritten(int start, int count)
    {
        ObjectDisposedException.ThrowIf(freed, this);
        CheckPosition(start, Length);
        CheckPosition(start + count - 1, Length);
        for (int position = start; position < start + count; position++)
        {
            int block = table[position / pool.BlockSize];
            if (pool.RefCount(block) > 1 || pool.IsPublished(block))
            {
                throw new InvalidOperationException($"position {position} lies in KV block {block}, which is shared with other sequences or published for prefix sharing; its K/V cannot change.");
            }
        }

        for (int l = 0; l < written.Length; l++)
        {
            if (start > written[l])
            {
                throw new ArgumentOutOfRangeException(nameof(start), $"layer {l} has positions [0, {written[l]}) written; write position {written[l]} next, not {start} (no gaps).");
            }

            written[l] = Math.Max(written[l], start + count);
        }

        PublishCompleteBlocks();
    }

    /// <summary>Writes positions <paramref name="start"/>.. of <paramref name="layer"/> from rows [count, kvHeads · headDim] of keys and values (a prefill chunk).</summary>
    public void WriteRange(int layer, int start, ReadOnlySpan<float> keys, ReadOnlySpan<float> values)
    {
        int kvDim = pool.KvDim;
        if (keys.Length != values.Length || keys.Length % kvDim != 0)
        {
            throw new ArgumentException($"keys and values must both be [count, {kvDim}] (kvHeads {pool.KvHeads} × headDim {pool.HeadDim}); got {keys.Length} and {values.Length} floats.");
        }

        for (int i = 0; i < keys.Length / kvDim; i++)
        {
            Write(layer, start + i, keys.Slice(i * kvDim, kvDim), values.Slice(i * kvDim, kvDim));
        }
    }

    /// <summary>Positions stored in block <paramref name="blockIndex"/> of the table (blockSize except perhaps the last).</summary>
    public int TokensInBlock(int blockIndex)
    {
        CheckBlockIndex(blockIndex);
        return Math.Min(pool.BlockSize, Length - (blockIndex * pool.BlockSize));
    }

    /// <summary>Keys of the table's block <paramref name="blockIndex"/> in <paramref name="layer"/>: [TokensInBlock, kvHeads, headDim], no copy.</summary>
    public ReadOnlySpan<float> KeyBlock(int layer, int blockIndex)
    {
        CheckLayer(layer);
        int n = TokensInBlock(blockIndex);
        return pool.KeyBlock(layer, table[blockIndex])[..(n * pool.KvDim)];
    }

    /// <summary>Values of the table's block <paramref name="blockIndex"/> in <paramref name="layer"/>: [TokensInBlock, kvHeads, headDim], no copy.</summary>
    public ReadOnlySpan<float> ValueBlock(int layer, int blockIndex)
    {
        CheckLayer(layer);
        int n = TokensInBlock(blockIndex);
        return pool.ValueBlock(layer, table[blockIndex])[..(n * pool.KvDim)];
    }

    /// <summary>The key row [kvHeads · headDim] of <paramref name="position"/> in <paramref name="layer"/>.</summary>
    public ReadOnlySpan<float> KeyAt(int layer, int position)
    {
        CheckLayer(layer);
        CheckPosition(position, Length);
        return pool.KeyBlock(layer, table[position / pool.BlockSize]).Slice((position % pool.BlockSize) * pool.KvDim, pool.KvDim);
    }

    /// <summary>The value row [kvHeads · headDim] of <paramref name="position"/> in <paramref name="layer"/>.</summary>
    public ReadOnlySpan<float> ValueAt(int layer, int position)
    {
        CheckLayer(layer);
        CheckPosition(position, Length);
        return pool.ValueBlock(layer, table[position / pool.BlockSize]).Slice((position % pool.BlockSize) * pool.KvDim, pool.KvDim);
    }

    /// <summary>
    /// A new sequence sharing every block of this one (parallel sampling, beam search): no copy now; whichever appends first
    /// into the shared partly filled last block gets a private copy of it.
    /// </summary>
    /// <exception cref="InvalidOperationException">Some layer has not written every position yet.</exception>
    public PagedSequence Fork()
    {
        ObjectDisposedException.ThrowIf(freed, this);
        for (int l = 0; l < written.Length; l++)
        {
            if (written[l] != Length)
            {
                throw new InvalidOperationException($"fork a sequence once every layer holds its {Length} positions; layer {l} has {written[l]}.");
            }
        }

        var child = new PagedSequence(pool, tokens.Length, root);
        foreach (int block in table)
        {
            pool.AddRef(block);
            child.table.Add(block);
        }

        child.tokens = (int[])tokens.Clone();
        child.Length = Length;
        Array.Fill(child.written, Length);
        child.hashedBlocks = hashedBlocks;
        child.lastHash = lastHash;
        return child;
    }

    /// <summary>Returns every block to the pool (shared ones when their last sequence lets go). Idempotent; the sequence is unusable afterwards.</summary>
    public void Free()
    {
        if (freed)
        {
            return;
        }

        freed = true;
        foreach (int block in table)
        {
            pool.Release(block);
        }

        table.Clear();
        Length = 0;
    }

    /// <summary>Same as <see cref="Free"/>.</summary>
    public void Dispose() => Free();

    /// <summary>Publishes each full block that every layer has finished writing, chaining the hashes from the first block.</summary>
    private void PublishCompleteBlocks()
    {
        if (Unshared)
        {
            return;
        }

        int complete = written.Min() / pool.BlockSize;
        int bs = pool.BlockSize;
        for (; hashedBlocks < complete; hashedBlocks++)
        {
            var blockTokens = tokens.AsSpan(hashedBlocks * bs, bs);
            lastHash = KvBlockPool.ChainHash(lastHash, blockTokens);
            int parent = hashedBlocks == 0 ? -1 : table[hashedBlocks - 1];
            pool.Publish(table[hashedBlocks], lastHash, parent, blockTokens, root);
        }
    }

    private void EnsureTokenCapacity(int count)
    {
        if (count > tokens.Length)
        {
            Array.Resize(ref tokens, Math.Max(count, tokens.Length * 2));
        }
    }

    private void CheckLayer(int layer)
    {
        if ((uint)layer >= (uint)pool.Layers)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), $"layer must be in [0, {pool.Layers}); got {layer}.");
        }
    }

    private static void CheckPosition(int position, int length)
    {
        if ((uint)position >= (uint)length)
        {
            throw new ArgumentOutOfRangeException(nameof(position), $"position must be in [0, {length}) (the sequence's length); got {position}.");
        }
    }

    private void CheckBlockIndex(int blockIndex)
    {
        if ((uint)blockIndex >= (uint)table.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(blockIndex), $"block index must be in [0, {table.Count}) (the sequence's blocks); got {blockIndex}.");
        }
    }
}
