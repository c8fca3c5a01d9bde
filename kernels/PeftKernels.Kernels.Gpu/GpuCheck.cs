// Argument checks that only the GPU launchers need, beyond the shared Check and the per-op shape
// checks of the kernel core (which both devices call, so the messages are the same): a live
// accelerator, and element counts that fit the kernels' 32-bit indices.
namespace PeftKernels.Kernels.Gpu;

internal static class GpuCheck
{
    public static void NotNull(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (accelerator.IsDisposed)
        {
            throw new ObjectDisposedException(nameof(accelerator), "the accelerator has been disposed.");
        }
    }

    /// <summary>Element counts are indexed with 32-bit ints inside the kernels.</summary>
    public static void FitsInt(long count, string what)
    {
        if (count > int.MaxValue)
        {
            throw new ArgumentException($"{what} has {count} elements; the GPU kernels index with 32-bit ints (at most {int.MaxValue}).", what);
        }
    }
}
