// Compute precision of the matrix products, separate from how weights are stored (fp32, bf16, fp16,
// 4-bit): with Bf16, the GEMM operands are rounded to bf16 (nearest, ties to even) while they are
// packed and multiplied with fp32 accumulation, like torch's bf16 autocast; norms, softmax,
// attention, the loss and the optimizer stay fp32. Rows of at most 4 (the GEMV path: decode) stay
// fp32, being memory-bound, where bf16 arithmetic gains nothing.
namespace PeftKernels.Kernels;

/// <summary>Arithmetic precision of the CPU matrix products (GEMM, the LoRA matmuls and branches).</summary>
public enum ComputePrecision
{
    /// <summary>fp32 operands and accumulation (the default).</summary>
    Fp32,

    /// <summary>bf16 operands (rounded while packing), fp32 accumulation.</summary>
    Bf16,
}

/// <summary>Which micro-kernel multiplies bf16 operands.</summary>
public enum Bf16Kernel
{
    /// <summary>The fastest available: AMX-BF16, then AVX512-BF16 (native library), then managed.</summary>
    Auto,

    /// <summary>AMX-BF16 tiles (native library; Sapphire Rapids and later).</summary>
    Amx,

    /// <summary>AVX512-BF16 vdpbf16ps (native library; Zen 4, Cooper Lake, Sapphire Rapids).</summary>
    Avx512Bf16,

    /// <summary>Managed: operands rounded to bf16 in fp32 registers, the fp32 FMA micro-kernels (exact products, same sums).</summary>
    Managed,
}
