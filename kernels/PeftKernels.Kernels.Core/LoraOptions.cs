// Options of the LoRA kernels (CPU and GPU): the dropout p of the LoRA branch, the seed of its
// mask (DropoutHash; regenerated in backward, never stored) and the CPU execution options.
namespace PeftKernels.Kernels;

/// <summary>Options of the LoRA kernels: dropout of the LoRA branch and execution options.</summary>
/// <param name="Dropout">Drop probability p in [0, 1) applied to x on the LoRA branch only.</param>
/// <param name="Seed">Seed of the dropout mask; forward and backward of one step must use the same seed.</param>
/// <param name="Kernel">Threads and SIMD path.</param>
public readonly record struct LoraOptions(float Dropout = 0f, ulong Seed = 0, KernelOptions Kernel = default);
