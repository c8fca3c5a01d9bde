// Keys and values of past positions for incremental decoding. On the host each (layer, batch row)
// owns a contiguous [capacity, kvHeads·headDim] array; on an accelerator each layer owns one device
// buffer of keys and one of values, [batch, capacity, kvHeads·headDim], so row b's first Length
// positions are the contiguous slice starting at b·capacity·kvDim. Either way the attention kernel
// reads the first Length rows of a batch row directly as a [1, Length, kvHeads, headDim] key/value
// tensor. Appending a step's K/V is a copy into rows Length..Length+t−1 (device to device on an
// accelerator); Truncate only moves Length back, the stale rows are overwritten by the next append.
using ILGPU;
using ILGPU.Runtime;

namespace PeftKernels.Models;

/// <summary>A key/value cache for generation with a fixed capacity, in host memory or on an accelerator.</summary>
public sealed class KvCache : IDisposable
{
    private readonly float[][][]? keys;
    private readonly float[][][]? values;
    private readonly DeviceArray<float>[]? deviceKeys;
    private readonly DeviceArray<float>[]? deviceValues;
    private DeviceArray<float>? deviceScratch;
    private bool disposed;

    /// <summary>An empty cache for <paramref name="batch"/> sequences of up to <paramref name="capacity"/> positions.</summary>
    /// <param name="layers">Decoder layers.</param>
    /// <param name="batch">Sequences decoded together.</param>
    /// <param name="capacity">Maximum positions per sequence (prompt plus generated tokens).</param>
    /// <param name="kvDim">kvHeads · headDim.</param>
    /// <param name="device">Where the cache lives: the device the model runs on (default the CPU).</param>
    public KvCache(int layers, int batch, int capacity, int kvDim, Device? device = null)
    {
        if (layers <= 0 || batch <= 0 || capacity <= 0 || kvDim <= 0)
        {
            throw new ArgumentException($"KV cache dims must be positive: layers {layers}, batch {batch}, capacity {capacity}, kvDim {kvDim}.");
        }

        Layers = layers;
        Batch = batch;
        Capacity = capacity;
        KvDim = kvDim;
        Device = device ?? Device.Cpu;
        if (Device.IsGpu)
        {
            long count = (long)batch * capacity * kvDim;
            if (count > int.MaxValue)
            {
                throw new ArgumentException($"KV cache of batch {batch} × capacity {capacity} × kvDim {kvDim} = {count} elements per layer exceeds the GPU kernels' int indexing.");
            }

            var accelerator = Device.Accelerator;
            deviceKeys = [.. Enumerable.Range(0, layers).Select(_ => accelerator.Rent<float>(count))];
            deviceValues = [.. Enumerable.Range(0, layers).Select(_ => accelerator.Rent<float>(count))];
        }
        else
        {
            keys = [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, batch).Select(_ => new float[(long)capacity * kvDim]).ToArray())];
            values = [.. Enumerable.Range(0, layers).Select(_ => Enumerable.Range(0, batch).Select(_ => new float[(long)capacity * kvDim]).ToArray())];
        }
    }

    /// <summary>Decoder layers.</summary>
    public int Layers { get; }

    /// <summary>Sequences in the batch.</summary>
    public int Batch { get; }

    /// <summary>Maximum positions.</summary>
    public int Capacity { get; }

    /// <summary>kvHeads · headDim.</summary>
    public int KvDim { get; }

    /// <summary>Where the keys and values live; the model must run on the same device.</summary>
    public Device Device { get; }

    /// <summary>Positions stored so far (the same for every layer once a forward pass completes).</summary>
    public int Length { get; private set; }

    /// <summary>Forgets every position from <paramref name="length"/> on (e.g. to reuse a cached prompt for another continuation).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The length is negative or beyond what is stored.</exception>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(length), $"the cache can be truncated to [0, {Length}] positions (those stored); got {length}.");
        }

        Length = length;
    }

    /// <summary>Hands the device buffers back to the pool (nothing to free for a host cache); the cache cannot be used afterwards.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }

        disposed = true;
        // Back to the pool, no wait: work queued later on the stream runs after the kernels that still use them.
        foreach (var buffer in (deviceKeys ?? []).Concat(deviceValues ?? []))
        {
            buffer.Dispose();
        }

        deviceScratch?.Dispose();
    }

    /// <summary>Key buffer of one layer and batch row (host cache).</summary>
    internal float[] Keys(int layer, int row) => keys![layer][row];

    /// <summary>Value buffer of one layer and batch row (host cache).</summary>
    internal float[] Values(int layer, int row) => values![layer][row];

    /// <summary>Keys of one layer on the device, [batch, capacity, kvDim] (device cache).</summary>
    internal ArrayView1D<float, Stride1D.Dense> DeviceKeys(int layer) => deviceKeys![layer].View;

    /// <summary>Values of one layer on the device, [batch, capacity, kvDim] (device cache).</summary>
    internal ArrayView1D<float, Stride1D.Dense> DeviceValues(int layer) => deviceValues![layer].View;

    /// <summary>
    /// <paramref name="length"/> floats of device scratch (the attention's log-sum-exp, which inference drops), kept between
    /// calls so a decode step allocates nothing for it; kernels on the accelerator's stream use it one after another.
    /// </summary>
    internal ArrayView1D<float, Stride1D.Dense> DeviceScratch(long length)
    {
        if (deviceScratch == null || deviceScratch.Length < length)
        {
            deviceScratch?.Dispose(); // to the pool; a kernel queued earlier still reads it before any later user writes it
            deviceScratch = Device.Accelerator.Rent<float>(length);
        }

        return deviceScratch.View.SubView(0, length);
    }

    /// <summary>Checks that the cache is usable by a model on <paramref name="device"/> with <paramref name="layers"/> layers and that <paramref name="count"/> more positions fit.</summary>
    internal void EnsureUsable(Device device, int layers, int kvDim, int count)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (!ReferenceEquals(device, Device))
        {
            throw new ArgumentException($"the KV cache is on {Device} but the model runs on {device}; create the cache with new KvCache(..., device: {device.Name}) (or model.CreateCache).", "cache");
        }

        if (layers != Layers || kvDim != KvDim)
        {
            throw new ArgumentException($"the KV cache has {Layers} layers of kvDim {KvDim}; the model has {layers} layers of kvDim {kvDim}.", "cache");
        }

        if (Length + count > Capacity)
        {
            throw new InvalidOperationException($"KV cache is full: {Length} positions stored, {count} more requested, capacity {Capacity}.");
        }
    }

    /// <summary>Marks <paramref name="count"/> more positions as stored (after every layer wrote them).</summary>
    internal void Advance(int count) => Length += count;
}
