// Keys and values of past positions for incremental decoding. Each (layer, batch row) owns a
// contiguous [capacity, kvHeads·headDim] buffer, so the attention kernel reads the first
// Length rows of it directly as a [1, Length, kvHeads, headDim] key/value tensor.
namespace PeftKernels.Models;

/// <summary>A key/value cache for generation with a fixed capacity.</summary>
public sealed class KvCache
{
    private readonly float[][][] keys;
    private readonly float[][][] values;

    /// <summary>An empty cache for <paramref name="batch"/> sequences of up to <paramref name="capacity"/> positions.</summary>
    public KvCache(int layers, int batch, int capacity, int kvDim)
    {
        if (layers <= 0 || batch <= 0 || capacity <= 0 || kvDim <= 0)
        {
            throw new ArgumentException($"KV cache dims must be positive: layers {layers}, batch {batch}, capacity {capacity}, kvDim {kvDim}.");
        }

        Batch = batch;
        Capacity = capacity;
        KvDim = kvDim;
        keys = [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, batch).Select(_ => new float[(long)capacity * kvDim]).ToArray())];
        values = [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, batch).Select(_ => new float[(long)capacity * kvDim]).ToArray())];
    }

    /// <summary>Sequences in the batch.</summary>
    public int Batch { get; }

    /// <summary>Maximum positions.</summary>
    public int Capacity { get; }

    /// <summary>kvHeads · headDim.</summary>
    public int KvDim { get; }

    /// <summary>Positions stored so far (the same for every layer once a forward pass completes).</summary>
    public int Length { get; private set; }

    /// <summary>Forgets every position from <paramref name="length"/> on (e.g. to reuse a cached prompt for another continuation).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The length is negative or beyond what is stored.</exception>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"must be in [0, {Length}] (the positions stored).");
        }

        Length = length;
    }

    /// <summary>Key buffer of one layer and batch row.</summary>
    internal float[] Keys(int layer, int row) => keys[layer][row];

    /// <summary>Value buffer of one layer and batch row.</summary>
    internal float[] Values(int layer, int row) => values[layer][row];

    /// <summary>Checks that <paramref name="count"/> more positions fit.</summary>
    internal void EnsureRoom(int count)
    {
        if (Length + count > Capacity)
        {
            throw new InvalidOperationException($"KV cache is full: {Length} positions stored, {count} more requested, capacity {Capacity}.");
        }
    }

    /// <summary>Marks <paramref name="count"/> more positions as stored (after every layer wrote them).</summary>
    internal void Advance(int count) => Length += count;
}
