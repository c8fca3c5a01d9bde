// The launcher convention of this assembly (every public *Kernels method follows it):
//  - Arguments in and out are device views; a launcher checks shapes (the kernel core's <Stem>Shapes,
//    the same checks and messages as the CPU kernel) and then only enqueues work on the accelerator's
//    default stream. Kernels on one stream run in order, so a launcher never waits between its own
//    launches, and the caller decides when to wait (before reading results on the host).
//  - No host download to validate: values that live on the device (labels, token ids, positions) are
//    the caller's to check on the host before upload (CrossEntropyKernels.CheckLabels,
//    EmbeddingKernels.CheckIds, RowSelectKernels.Group, MoeRoutingKernels.CheckRoutes).
//  - Scratch and staged host arrays come from the accelerator's DeviceMemoryPool and go back to it
//    when the launcher returns, without a wait: the stream orders the next user after this work.
//  - A launcher waits only when it returns a host value (CrossEntropyKernels.Forward's loss sum,
//    AdamWKernels.SumOfSquares), exactly once, through ForHostValue (a counted DeviceSync.Wait).
namespace PeftKernels.Kernels.Gpu;

/// <summary>The only place a launcher waits for the device (see the rule above).</summary>
internal static class GpuLaunch
{
    /// <summary>Waits for the queued work and reads <paramref name="view"/> back to the host (one wait, counted by <see cref="DeviceSync"/>).</summary>
    public static T[] ForHostValue<T>(ArrayView1D<T, Stride1D.Dense> view)
        where T : unmanaged => DeviceSync.Download(view);
}
