// A pool of fixed-size key/value blocks for a paged KV cache (vLLM's PagedAttention layout), allocated
// once up front. Storage, per layer, one fp32 array for keys and one for values:
//   keys[layer], values[layer]  [blockCount, blockSize, kvHeads, headDim]
// so block b of layer l is the contiguous slice [b·blockSize·kvDim, (b+1)·blockSize·kvDim), kvDim =
// kvHeads·headDim: a block holds blockSize positions of one layer, and a block id names the same slot
// in every layer (a sequence's block table is shared by all layers). Keys are stored as the model
// produces them (after RoPE), as in KvCache. For the device engine the same storage lives on the
// accelerator instead (DeviceKvBlocks: no host arrays; copy on write and row writes go to the device);
// everything below (counts, free list, prefix index) stays on the host either way.
// KvCacheType.BFloat16 (host only) stores the same layout as bf16 bit patterns (ushort, each element
// rounded to nearest-even when written, Bf16.FromSingle): half the bytes that a decode step's attention
// streams from memory (llama.cpp keeps its cache in f16 by default). The fp32 views (KeyBlock, LayerKeys)
// then throw; the engine reads the *Bf16 views (PagedDecodeAttention widens in registers, exactly).
// Blocks carry a reference count: a block is free at 0, owned by one sequence at 1, shared (by a fork
// or by prefix sharing) above 1. A full block can be published in the prefix index under a chained
// hash h_i = H(h_{i−1}, token ids of block i), as vLLM's automatic prefix caching does. h_{−1} is the
// root of the adapter version the sequence runs with (RootOf; a fixed seed for the base model): every
// adapter changes keys and values, so blocks are shared only between sequences of the same version. A
// lookup is verified exactly (the candidate's root, parent block and token ids must match), so a hash
// collision can only cost a missed share, never a wrong one. A block leaves the index when
// its count drops to 0 and goes back on the free list (no cache of finished sequences' blocks yet).
// Not thread-safe: one scheduler owns the pool and its sequences.
namespace PeftKernels.Engine;

/// <summary>
/// Fixed-size blocks of keys and values (fp32, <c>blockSize</c> positions × layers × kvHeads × headDim each for K and V),
/// allocated once, with a free list, reference counts and a prefix index for sharing prompt blocks between sequences.
/// </summary>
public sealed class KvBlockPool
{
    /// <summary>Seed of the chained block hash (the "previous hash" of a sequence's first block).</summary>
    internal const ulong RootHash = 0x9E3779B97F4A7C15UL;

    private readonly float[][] keys;
    private readonly float[][] values;
    private readonly ushort[][] keysBf16 = [];
    private readonly ushort[][] valuesBf16 = [];
    private readonly int[] refCounts;
    private readonly Stack<int> free;
    private readonly int[] blockTokens;
    private readonly int[] parents;
    private readonly ulong[] hashes;
    private readonly ulong[] roots;
    private readonly bool[] indexed;
    private readonly Dictionary<ulong, int> prefixIndex;

    /// <summary>A pool of <paramref name="blockCount"/> blocks, all free.</summary>
    /// <param name="layers">Decoder layers.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="blockSize">Positions per block (vLLM's default is 16).</param>
    /// <param name="blockCount">Blocks in the pool: its capacity is blockCount · blockSize positions, shared by all sequences.</param>
    /// <exception cref="ArgumentException">A dimension is not positive, or a layer's storage exceeds the largest .NET array.</exception>
    public KvBlockPool(int layers, int kvHeads, int headDim, int blockSize, int blockCount)
        : this(layers, kvHeads, headDim, blockSize, blockCount, null)
    {
    }

    /// <summary>A host pool whose elements are stored as <paramref name="cacheType"/> (fp32, or bf16 rounded to nearest-even).</summary>
    /// <exception cref="ArgumentException">A dimension is not positive, or a layer's storage exceeds the largest .NET array.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="cacheType"/> is not a defined value.</exception>
    public KvBlockPool(int layers, int kvHeads, int headDim, int blockSize, int blockCount, KvCacheType cacheType)
        : this(layers, kvHeads, headDim, blockSize, blockCount, null, cacheType)
    {
    }

    /// <summary>
    /// A pool whose keys and values live on <paramref name="accelerator"/> (DeviceKvBlocks: one device buffer per layer for K and V,
    /// the same layout, indexed by this pool's block ids), or on the host when it is null. The block accounting stays on the host.
    /// </summary>
    internal KvBlockPool(int layers, int kvHeads, int headDim, int blockSize, int blockCount, ILGPU.Runtime.Accelerator? accelerator,
        KvCacheType cacheType = KvCacheType.Float32)
    {
        if (cacheType is not (KvCacheType.Float32 or KvCacheType.BFloat16))
        {
            throw new ArgumentOutOfRangeException(nameof(cacheType), cacheType, "unknown KvCacheType.");
        }

        if (accelerator != null && cacheType != KvCacheType.Float32)
        {
            throw new NotSupportedException($"a {cacheType} KV cache is CPU-only; the device engine keeps fp32 keys and values.");
        }

        if (layers <= 0 || kvHeads <= 0 || headDim <= 0 || blockSize <= 0 || blockCount <= 0)
        {
            throw new ArgumentException($"KV block pool dims must be positive: layers {layers}, kvHeads {kvHeads}, headDim {headDim}, blockSize {blockSize}, blockCount {blockCount}.");
        }

        long perLayer = (long)blockCount * blockSize * kvHeads * headDim;
        if (perLayer > Array.MaxLength)
        {
            throw new ArgumentException($"KV block pool of {blockCount} blocks × {blockSize} positions × kvDim {kvHeads * headDim} = {perLayer} floats per layer exceeds the largest array ({Array.MaxLength}); use fewer or smaller blocks.");
        }

        Layers = layers;
        KvHeads = kvHeads;
        HeadDim = headDim;
        BlockSize = blockSize;
        BlockCount = blockCount;
        CacheType = cacheType;
        prefixIndex = new Dictionary<ulong, int>(blockCount); // every block can be indexed at once: publishing never grows it
        if (accelerator != null)
        {
            Device = new DeviceKvBlocks(accelerator, layers, perLayer, blockSize * kvHeads * headDim);
            keys = values = [];
        }
        else if (cacheType == KvCacheType.BFloat16)
        {
            keys = values = [];
            keysBf16 = [.. Enumerable.Range(0, layers).Select(_ => new ushort[perLayer])];
            valuesBf16 = [.. Enumerable.Range(0, layers).Select(_ => new ushort[perLayer])];
        }
        else
        {
            keys = [.. Enumerable.Range(0, layers).Select(_ => new float[perLayer])];
            values = [.. Enumerable.Range(0, layers).Select(_ => new float[perLayer])];
        }

        refCounts = new int[blockCount];
        blockTokens = new int[blockCount * blockSize];
        parents = new int[blockCount];
        hashes = new ulong[blockCount];
        roots = new ulong[blockCount];
        indexed = new bool[blockCount];
        free = new Stack<int>(blockCount);
        for (int b = blockCount - 1; b >= 0; b--)
        {
            free.Push(b);
        }
    }

    /// <summary>Decoder layers.</summary>
    public int Layers { get; }

    /// <summary>How the keys and values are stored (fp32, or bf16 on the host).</summary>
    public KvCacheType CacheType { get; }

    /// <summary>The device storage of the keys and values, or null when they live in host arrays.</summary>
    internal DeviceKvBlocks? Device { get; }

    /// <summary>Key/value heads.</summary>
    public int KvHeads { get; }

    /// <summary>Elements per head.</summary>
    public int HeadDim { get; }

    /// <summary>kvHeads · headDim: floats per position per layer for K (and as many for V).</summary>
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Positions per block.</summary>
    public int BlockSize { get; }

    /// <summary>Blocks in the pool.</summary>
    public int BlockCount { get; }

    /// <summary>Blocks referenced by at least one sequence.</summary>
    public int UsedBlocks => BlockCount - free.Count;

    /// <summary>Blocks on the free list.</summary>
    public int FreeBlocks => free.Count;

    /// <summary>Blocks referenced by more than one sequence (prefix sharing or forks).</summary>
    public int SharedBlocks { get; private set; }

    /// <summary>Full blocks currently published in the prefix index.</summary>
    public int IndexedBlocks => prefixIndex.Count;

    /// <summary>Bytes of one block: K and V, every layer.</summary>
    public long BytesPerBlock => 2L * Layers * BlockSize * KvDim * (CacheType == KvCacheType.BFloat16 ? sizeof(ushort) : sizeof(float));

    /// <summary>How many blocks of the given shape fit in <paramref name="bytes"/> (for sizing a pool from a memory budget).</summary>
    public static int BlocksForBytes(long bytes, int layers, int kvHeads, int headDim, int blockSize)
    {
        long perBlock = 2L * layers * blockSize * kvHeads * headDim * sizeof(float);
        if (perBlock <= 0 || bytes < 0)
        {
            throw new ArgumentException($"BlocksForBytes needs positive dims and a non-negative budget: bytes {bytes}, layers {layers}, kvHeads {kvHeads}, headDim {headDim}, blockSize {blockSize}.");
        }

        return (int)Math.Min(int.MaxValue, bytes / perBlock);
    }

    /// <summary>Reference count of a block (0 when free).</summary>
    public int RefCount(int block)
    {
        CheckBlock(block);
        return refCounts[block];
    }

    /// <summary>True while <paramref name="block"/> is published in the prefix index (its K/V are then immutable).</summary>
    public bool IsPublished(int block)
    {
        CheckBlock(block);
        return indexed[block];
    }

    /// <summary>A new empty sequence whose blocks come from this pool.</summary>
    public PagedSequence CreateSequence() => new(this, 0);

    /// <summary>An empty sequence with room reserved for <paramref name="expectedLength"/> positions in its token list and block table, so appending up to there allocates nothing.</summary>
    public PagedSequence CreateSequence(int expectedLength) => new(this, expectedLength);

    /// <summary>
    /// An empty sequence whose blocks are shared only with sequences of the same <paramref name="root"/> (<see cref="RootOf"/>:
    /// the adapter version that computes its keys and values; <see cref="RootHash"/> for the base model).
    /// </summary>
    internal PagedSequence CreateSequence(int expectedLength, ulong root) => new(this, expectedLength, root);

    /// <summary>
    /// The root of the block hashes of sequences run with adapter <paramref name="name"/> version <paramref name="version"/>
    /// (null: the base model). Every adapter changes the keys and values of the layers after the first one it touches, so blocks
    /// computed under one adapter version are never shared with another (as vLLM keys its prefix cache by LoRA id).
    /// </summary>
    internal static ulong RootOf(string? name, int version)
    {
        if (name == null)
        {
            return RootHash;
        }

        ulong h = RootHash ^ 0xD6E8FEB86659FD93UL;
        foreach (char c in name)
        {
            h = (h ^ c) * 0x100000001B3UL;
        }

        return (h ^ (uint)version) * 0x9FB21C651E98DF25UL;
    }

    /// <summary>Takes a block off the free list with reference count 1; false (and nothing changed) when none is free.</summary>
    internal bool TryAllocate(out int block)
    {
        if (!free.TryPop(out block))
        {
            block = -1;
            return false;
        }

        refCounts[block] = 1;
        return true;
    }

    /// <summary>One more sequence references <paramref name="block"/>.</summary>
    internal void AddRef(int block)
    {
        if (refCounts[block] <= 0)
        {
            throw new InvalidOperationException($"KV block {block} is free; only a referenced block can be shared.");
        }

        if (++refCounts[block] == 2)
        {
            SharedBlocks++;
        }
    }

    /// <summary>One sequence drops <paramref name="block"/>; at 0 it leaves the prefix index and returns to the free list.</summary>
    internal void Release(int block)
    {
        if (refCounts[block] <= 0)
        {
            throw new InvalidOperationException($"KV block {block} is already free (released twice).");
        }

        int count = --refCounts[block];
        if (count == 1)
        {
            SharedBlocks--;
        }
        else if (count == 0)
        {
            if (indexed[block])
            {
                prefixIndex.Remove(hashes[block]);
                indexed[block] = false;
            }

            free.Push(block);
        }
    }

    /// <summary>One layer's whole key storage [blockCount, blockSize, kvDim] (the engine's attention reads it through a block table).</summary>
    internal float[] LayerKeys(int layer) => HostStorage(keys)[layer];

    /// <summary>One layer's whole value storage [blockCount, blockSize, kvDim].</summary>
    internal float[] LayerValues(int layer) => HostStorage(values)[layer];

    /// <summary>One layer's whole key storage as bf16 bits (a <see cref="KvCacheType.BFloat16"/> pool).</summary>
    internal ushort[] LayerKeysBf16(int layer) => Bf16Storage(keysBf16)[layer];

    /// <summary>One layer's whole value storage as bf16 bits.</summary>
    internal ushort[] LayerValuesBf16(int layer) => Bf16Storage(valuesBf16)[layer];

    /// <summary>Keys of one block in one layer as bf16 bits: [blockSize, kvHeads, headDim].</summary>
    internal Span<ushort> KeyBlockBf16(int layer, int block) => Bf16Storage(keysBf16)[layer].AsSpan(block * BlockSize * KvDim, BlockSize * KvDim);

    /// <summary>Values of one block in one layer as bf16 bits.</summary>
    internal Span<ushort> ValueBlockBf16(int layer, int block) => Bf16Storage(valuesBf16)[layer].AsSpan(block * BlockSize * KvDim, BlockSize * KvDim);

    /// <summary>Keys of one block in one layer: [blockSize, kvHeads, headDim].</summary>
    internal Span<float> KeyBlock(int layer, int block) => HostStorage(keys)[layer].AsSpan(block * BlockSize * KvDim, BlockSize * KvDim);

    /// <summary>Values of one block in one layer: [blockSize, kvHeads, headDim].</summary>
    internal Span<float> ValueBlock(int layer, int block) => HostStorage(values)[layer].AsSpan(block * BlockSize * KvDim, BlockSize * KvDim);

    /// <summary>Writes one position's key and value rows [kvDim] at slot <paramref name="slot"/> of <paramref name="block"/> in <paramref name="layer"/> (host copy, or upload to the device).</summary>
    internal void WriteRow(int layer, int block, int slot, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (Device != null)
        {
            Device.WriteRow(layer, ((long)block * BlockSize) + slot, key, value);
            return;
        }

        int offset = slot * KvDim;
        if (CacheType == KvCacheType.BFloat16)
        {
            Kernels.Cpu.Bf16.FromSingle(key, KeyBlockBf16(layer, block).Slice(offset, key.Length));
            Kernels.Cpu.Bf16.FromSingle(value, ValueBlockBf16(layer, block).Slice(offset, value.Length));
            return;
        }

        key.CopyTo(KeyBlock(layer, block)[offset..]);
        value.CopyTo(ValueBlock(layer, block)[offset..]);
    }

    /// <summary>Copies block <paramref name="source"/>'s keys and values (every layer) into <paramref name="target"/> (copy on write; on the device when the blocks live there).</summary>
    internal void CopyBlock(int source, int target)
    {
        if (Device != null)
        {
            Device.CopyBlock(source, target);
            return;
        }

        for (int l = 0; l < Layers; l++)
        {
            if (CacheType == KvCacheType.BFloat16)
            {
                KeyBlockBf16(l, source).CopyTo(KeyBlockBf16(l, target));
                ValueBlockBf16(l, source).CopyTo(ValueBlockBf16(l, target));
                continue;
            }

            KeyBlock(l, source).CopyTo(KeyBlock(l, target));
            ValueBlock(l, source).CopyTo(ValueBlock(l, target));
        }
    }

    /// <summary>The chained hash of a full block: <paramref name="parentHash"/> mixed with its token ids.</summary>
    internal static ulong ChainHash(ulong parentHash, ReadOnlySpan<int> tokens)
    {
        ulong h = parentHash;
        foreach (int t in tokens)
        {
            h = Mix(h ^ (uint)t);
        }

        return Mix(h ^ (ulong)tokens.Length);
    }

    /// <summary>
    /// Publishes a full block under <paramref name="hash"/> with its parent block (−1 for a sequence's first) and token ids.
    /// Nothing happens when the hash is taken (the same prefix published by another sequence, or a collision).
    /// </summary>
    internal void Publish(int block, ulong hash, int parent, ReadOnlySpan<int> tokens, ulong root = RootHash)
    {
        if (indexed[block] || !prefixIndex.TryAdd(hash, block))
        {
            return;
        }

        indexed[block] = true;
        hashes[block] = hash;
        roots[block] = root;
        parents[block] = parent;
        tokens.CopyTo(blockTokens.AsSpan(block * BlockSize, BlockSize));
    }

    /// <summary>The published block with this hash whose parent is <paramref name="parent"/> and whose token ids are <paramref name="tokens"/>, or −1.</summary>
    internal int Lookup(ulong hash, int parent, ReadOnlySpan<int> tokens, ulong root = RootHash)
    {
        if (!prefixIndex.TryGetValue(hash, out int block))
        {
            return -1;
        }

        bool same = roots[block] == root && parents[block] == parent && tokens.SequenceEqual(blockTokens.AsSpan(block * BlockSize, BlockSize));
        return same ? block : -1;
    }

    private float[][] HostStorage(float[][] storage) =>
        Device != null ? throw new InvalidOperationException($"the KV blocks of this pool live on {Device.Accelerator.Name}; read them through the device engine, not as host arrays.")
        : CacheType != KvCacheType.Float32 ? throw new InvalidOperationException($"this KV pool stores {CacheType}; read it through the bf16 views (or widen), not as fp32 arrays.")
        : storage;

    private ushort[][] Bf16Storage(ushort[][] storage) => CacheType == KvCacheType.BFloat16 ? storage
        : throw new InvalidOperationException($"this KV pool stores {CacheType}, not bf16.");

    private void CheckBlock(int block)
    {
        if ((uint)block >= (uint)BlockCount)
        {
            throw new ArgumentOutOfRangeException(nameof(block), $"block ids are in [0, {BlockCount}); got {block}.");
        }
    }

    /// <summary>SplitMix64's finalizer: a bijective 64-bit mix.</summary>
    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
