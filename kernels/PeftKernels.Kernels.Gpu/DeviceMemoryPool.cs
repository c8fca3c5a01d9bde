// A caching allocator for device memory, one per accelerator, the way PyTorch's CUDA caching
// allocator works: a buffer handed back is not freed but kept in a free list of its size class,
// and the next request of that class takes it instead of calling the driver. Freeing device memory
// (cuMemFree) waits for the whole device and allocating it (cuMemAlloc) costs tens of microseconds;
// a decode step runs hundreds of ops, so after warm-up every buffer must come from the free lists.
// Why it is safe without waiting: all work goes to the accelerator's one default stream, in order,
// so a buffer handed back while a queued kernel still reads it is only written again by work queued
// after that kernel (the next renter's kernels or an upload on the same stream).
// Size classes (bytes): below 1 MiB, multiples of 512; above, 2^k·{1, 1.25, 1.5, 1.75} (at most
// 25 % waste), so a tensor that grows a little (a KV read over one more token) keeps its class.
// Counters: hits (served from a free list), misses (a driver allocation), returns, bytes in use,
// cached and reserved (in use + cached) and the peak reserved; the tests assert zero misses after
// warm-up. A miss that fails for lack of memory frees the cache and tries once more.
// An array that is never disposed comes back when the garbage collector finalizes it (the pool keeps
// its block alive until then, so the block is never freed under a queued kernel).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>Counters of a <see cref="DeviceMemoryPool"/> (a snapshot).</summary>
/// <param name="Hits">Requests served from the cache.</param>
/// <param name="Misses">Requests that allocated device memory.</param>
/// <param name="Returns">Arrays handed back.</param>
/// <param name="BytesInUse">Bytes of the blocks rented out now.</param>
/// <param name="BytesCached">Bytes of the blocks waiting in the free lists.</param>
/// <param name="BytesReserved">Bytes held from the device: in use plus cached.</param>
/// <param name="PeakBytesReserved">The most bytes ever held at once.</param>
public readonly record struct DevicePoolStats(long Hits, long Misses, long Returns, long BytesInUse, long BytesCached, long BytesReserved, long PeakBytesReserved);

/// <summary>The caching allocator of one accelerator (see the file header).</summary>
public sealed class DeviceMemoryPool
{
    /// <summary>Requests below this many bytes are rounded to <see cref="SmallGranule"/>.</summary>
    public const long SmallLimit = 1 << 20;

    /// <summary>The rounding of small requests, in bytes.</summary>
    public const long SmallGranule = 512;

    private static readonly ConditionalWeakTable<Accelerator, DeviceMemoryPool> Pools = new();
    private readonly Accelerator accelerator;
    private readonly Dictionary<long, Stack<MemoryBuffer1D<byte, Stride1D.Dense>>> free = [];
    private readonly HashSet<MemoryBuffer1D<byte, Stride1D.Dense>> inUse = new(ReferenceEqualityComparer.Instance);
    private readonly Lock gate = new();
    private long hits, misses, returns, bytesInUse, bytesCached, peak;

    private DeviceMemoryPool(Accelerator accelerator) => this.accelerator = accelerator;

    /// <summary>The pool of <paramref name="accelerator"/> (created on first use, lives as long as the accelerator).</summary>
    public static DeviceMemoryPool Of(Accelerator accelerator)
    {
        GpuCheck.NotNull(accelerator);
        return Pools.GetValue(accelerator, static a => new DeviceMemoryPool(a));
    }

    /// <summary>The accelerator whose memory this pool holds.</summary>
    public Accelerator Accelerator => accelerator;

    /// <summary>The counters now.</summary>
    public DevicePoolStats Stats
    {
        get
        {
            lock (gate)
            {
                return new DevicePoolStats(hits, misses, returns, bytesInUse, bytesCached, bytesInUse + bytesCached, peak);
            }
        }
    }

    /// <summary>The bytes a request of <paramref name="bytes"/> occupies (its size class).</summary>
    public static long SizeClass(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if (bytes == 0)
        {
            return 0;
        }

        if (bytes <= SmallLimit)
        {
            return (bytes + SmallGranule - 1) / SmallGranule * SmallGranule;
        }

        long step = (1L << (63 - (int)long.LeadingZeroCount(bytes))) / 4;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>An uninitialised array of <paramref name="length"/> elements (from the cache when it has a block of the class).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative length.</exception>
    public DeviceArray<T> Rent<T>(long length)
        where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length == 0)
        {
            return new DeviceArray<T>(this, null, 0);
        }

        long bytes = checked(length * Unsafe.SizeOf<T>());
        return new DeviceArray<T>(this, Take(SizeClass(bytes)), length);
    }

    /// <summary>An array holding a copy of <paramref name="values"/>, queued on the stream without waiting (<see cref="DeviceSync.Upload"/>).</summary>
    public DeviceArray<T> Upload<T>(ReadOnlySpan<T> values)
        where T : unmanaged
    {
        var array = Rent<T>(values.Length);
        DeviceSync.Upload(array.View, values);
        return array;
    }

    /// <summary>Frees every cached block (those in use stay); returns the bytes freed.</summary>
    public long Trim()
    {
        List<MemoryBuffer1D<byte, Stride1D.Dense>> blocks;
        long freed;
        lock (gate)
        {
            blocks = [.. free.Values.SelectMany(s => s)];
            free.Clear();
            freed = bytesCached;
            bytesCached = 0;
        }

        foreach (var block in blocks)
        {
            block.Dispose();
        }

        return freed;
    }

    /// <summary>Hands a block back to its free list (from <see cref="DeviceArray{T}.Dispose"/> or its finalizer).</summary>
    internal void Return(MemoryBuffer1D<byte, Stride1D.Dense> block)
    {
        lock (gate)
        {
            if (!inUse.Remove(block))
            {
                return;
            }

            returns++;
            bytesInUse -= block.Length;
            if (block.IsDisposed)
            {
                return; // the accelerator was disposed with it
            }

            bytesCached += block.Length;
            if (!free.TryGetValue(block.Length, out var stack))
            {
                free[block.Length] = stack = new Stack<MemoryBuffer1D<byte, Stride1D.Dense>>();
            }

            stack.Push(block);
        }
    }

    private MemoryBuffer1D<byte, Stride1D.Dense> Take(long classBytes)
    {
        lock (gate)
        {
            if (free.TryGetValue(classBytes, out var stack))
            {
                while (stack.TryPop(out var cached))
                {
                    bytesCached -= cached.Length;
                    if (!cached.IsDisposed)
                    {
                        hits++;
                        return Lend(cached);
                    }
                }
            }

            misses++;
        }

        MemoryBuffer1D<byte, Stride1D.Dense> block;
        try
        {
            block = accelerator.Allocate1D<byte>(classBytes);
        }
        catch (Exception e) when (e is not ArgumentException && Stats.BytesCached > 0)
        {
            Trim(); // out of device memory: give the cache back to the driver and try once more
            block = accelerator.Allocate1D<byte>(classBytes);
        }

        lock (gate)
        {
            return Lend(block);
        }
    }

    private MemoryBuffer1D<byte, Stride1D.Dense> Lend(MemoryBuffer1D<byte, Stride1D.Dense> block)
    {
        inUse.Add(block);
        bytesInUse += block.Length;
        peak = Math.Max(peak, bytesInUse + bytesCached);
        return block;
    }
}

/// <summary>The pool of an accelerator, as calls on the accelerator.</summary>
public static class DeviceMemoryPoolExtensions
{
    /// <summary>An uninitialised pooled array of <paramref name="length"/> elements (<see cref="DeviceMemoryPool.Rent{T}"/>).</summary>
    public static DeviceArray<T> Rent<T>(this Accelerator accelerator, long length)
        where T : unmanaged => DeviceMemoryPool.Of(accelerator).Rent<T>(length);

    /// <summary>A pooled array holding a copy of <paramref name="values"/>, queued without a wait (<see cref="DeviceMemoryPool.Upload{T}"/>).</summary>
    public static DeviceArray<T> Upload<T>(this Accelerator accelerator, T[] values)
        where T : unmanaged => DeviceMemoryPool.Of(accelerator).Upload<T>(values);
}
