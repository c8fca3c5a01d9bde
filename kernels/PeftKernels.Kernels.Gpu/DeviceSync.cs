// Every point where the host waits for an accelerator goes through this class, so it can be counted
// (the tests assert at most 1 wait per decode step and 2 per training step) and found. ILGPU's
// CopyToCPU / CopyFromCPU / GetAsArray1D and MemoryBuffer.Dispose all wait for the stream; outside
// this class and the pool's Trim, src/ and kernels/ call none of them (a test scans the sources).
//  - Wait: the host needs a value the device computes (a loss, a gradient norm, a sampled token,
//    a checkpoint); Download waits once and copies.
//  - Upload: host values (token ids, labels, positions, a weight) into device memory, queued on the
//    stream without a wait. CUDA copies from pageable host memory into a staging buffer before
//    cuMemcpyHtoDAsync returns, so the host may reuse its array at once; the CPU accelerator copies
//    at once. The host values are pinned for the call (the copy works on their raw address).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>The counted host waits for an accelerator, and transfers that do not wait.</summary>
public static class DeviceSync
{
    private static readonly ConditionalWeakTable<Accelerator, StrongBox<long>> Waits = new();

    /// <summary>Host waits made on <paramref name="accelerator"/> since it was created.</summary>
    public static long Count(Accelerator accelerator)
    {
        GpuCheck.NotNull(accelerator);
        return Volatile.Read(ref Waits.GetValue(accelerator, static _ => new StrongBox<long>()).Value);
    }

    /// <summary>Waits until the queued work is done (counted).</summary>
    public static void Wait(Accelerator accelerator)
    {
        GpuCheck.NotNull(accelerator);
        Interlocked.Increment(ref Waits.GetValue(accelerator, static _ => new StrongBox<long>()).Value);
        accelerator.Synchronize();
    }

    /// <summary>Waits for the queued work (counted), then copies <paramref name="view"/> into <paramref name="destination"/>.</summary>
    public static void Download<T>(ArrayView1D<T, Stride1D.Dense> view, Span<T> destination)
        where T : unmanaged
    {
        if (view.Length != destination.Length)
        {
            throw new ArgumentException($"destination has {destination.Length} elements but the device view has {view.Length}.", nameof(destination));
        }

        if (view.Length == 0)
        {
            return;
        }

        var accelerator = view.GetAccelerator();
        Wait(accelerator);
        view.CopyToCPU(accelerator.DefaultStream, destination);
    }

    /// <summary>Waits for the queued work (counted) and returns a host copy of <paramref name="view"/>.</summary>
    public static T[] Download<T>(ArrayView1D<T, Stride1D.Dense> view)
        where T : unmanaged
    {
        var host = new T[view.Length];
        Download(view, host);
        return host;
    }

    /// <summary>Queues a copy of <paramref name="values"/> into <paramref name="target"/> on the stream; no wait (see the header).</summary>
    public static void Upload<T>(ArrayView1D<T, Stride1D.Dense> target, ReadOnlySpan<T> values)
        where T : unmanaged
    {
        if (target.Length != values.Length)
        {
            throw new ArgumentException($"{values.Length} values do not fit a device view of {target.Length}.", nameof(values));
        }

        if (values.Length == 0)
        {
            return;
        }

        // ILGPU's copy takes a raw address: the span stays pinned for the call, or a collection on another thread
        // could move the array between the address being taken and the copy (garbage read, seen once in CI).
        unsafe
        {
            fixed (T* pinned = values)
            {
                target.AsContiguous().CopyFromCPUUnsafeAsync(ref *pinned, values.Length);
            }
        }
    }
}
