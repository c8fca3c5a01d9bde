// The launcher convention of this assembly (every public *Kernels method follows it):
//  - Arguments in and out are device views; a launcher checks shapes (the kernel core's <Stem>Shapes,
//    the same checks and messages as the CPU kernel) and then only enqueues work on the accelerator's
//    default stream. Kernels on one stream run in order, so a launcher never waits between its own
//    launches, and the caller decides when to wait (before reading results on the host).
//  - No host download to validate: values that live on the device (labels, token ids, positions) are
//    the caller's to check on the host before upload (CrossEntropyKernels.CheckLabels,
//    EmbeddingKernels.CheckIds, RowSelectKernels.Group, MoeRoutingKernels.CheckRoutes).
//  - A launcher waits, exactly once and at its end, in two cases only, each through this class so it
//    can be found: it returns a host value (CrossEntropyKernels.Forward's loss sum,
//    AdamWKernels.SumOfSquares) — ForHostValue; or it staged host arrays or scratch in temporary device
//    buffers that it frees before returning (EmbeddingKernels.Backward's index lists, LoraBranchKernels
//    on a row subset and its backward's dh, LoraMatmulKernels/QLoraMatmulKernels.Backward's dh,
//    Quant4Buffers.Upload's nested scales) — BeforeFree.
namespace PeftKernels.Kernels.Gpu;

/// <summary>The only places a launcher waits for the device (see the rule above).</summary>
internal static class GpuLaunch
{
    /// <summary>Waits for the queued work before the launcher reads a result back to the host.</summary>
    public static void ForHostValue(Accelerator accelerator) => accelerator.Synchronize();

    /// <summary>Waits for the queued work before the launcher frees the temporary device buffers it used.</summary>
    public static void BeforeFree(Accelerator accelerator) => accelerator.Synchronize();
}
