// Execution options of the CPU kernels (threads, SIMD width). They live in the shared core because
// the option records of other ops (LoraOptions) and the GPU launchers' callers carry them too.
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels;

/// <summary>Which vector width a CPU kernel uses.</summary>
public enum SimdPath
{
    /// <summary>The widest path this processor supports.</summary>
    Auto,

    /// <summary>512-bit vectors (AVX-512F + FMA).</summary>
    Vector512,

    /// <summary>256-bit vectors (AVX2 + FMA).</summary>
    Vector256,

    /// <summary>Plain scalar code, no intrinsics.</summary>
    Scalar,
}

/// <summary>Execution options shared by the CPU kernels.</summary>
/// <param name="Threads">Worker threads; 0 means <see cref="Environment.ProcessorCount"/>.</param>
/// <param name="Path">The SIMD path; <see cref="SimdPath.Auto"/> picks the widest supported one.</param>
public readonly record struct KernelOptions(int Threads = 0, SimdPath Path = SimdPath.Auto)
{
    /// <summary>Precision of the matrix products (<see cref="ComputePrecision.Fp32"/> by default; storage is separate).</summary>
    public ComputePrecision Compute { get; init; }

    /// <summary>With <see cref="ComputePrecision.Bf16"/>: which micro-kernel (Auto picks the fastest available; Managed forces the fallback).</summary>
    public Bf16Kernel Bf16Kernel { get; init; }

    /// <summary>
    /// With <see cref="ComputePrecision.Bf16"/>: true stops the GEMMs from keeping the packed bf16 panels of frozen weights
    /// across calls (by default a weight operand that carries a panel cache, e.g. a frozen PeftKernels tensor, keeps them:
    /// about 4 bytes per weight element when the weight is used both forward and backward).
    /// </summary>
    public bool NoWeightPanelCache { get; init; }

    /// <summary>The integer 4-bit GEMV's row kernel (Auto picks the native AVX512-VNNI rows where available; Managed forces the fallback).</summary>
    public Int8Kernel Int8Kernel { get; init; }

    /// <summary>True when the processor and runtime can execute <paramref name="path"/>.</summary>
    public static bool IsSupported(SimdPath path) => path switch
    {
        SimdPath.Auto or SimdPath.Scalar => true,
        SimdPath.Vector256 => Vector256.IsHardwareAccelerated && Avx2.IsSupported && Fma.IsSupported,
        SimdPath.Vector512 => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && Fma.IsSupported,
        _ => false,
    };

    /// <summary>The widest supported path.</summary>
    public static SimdPath Best =>
        IsSupported(SimdPath.Vector512) ? SimdPath.Vector512 :
        IsSupported(SimdPath.Vector256) ? SimdPath.Vector256 : SimdPath.Scalar;

    internal SimdPath ResolvePath()
    {
        if (Path == SimdPath.Auto)
        {
            return Best;
        }

        if (!IsSupported(Path))
        {
            throw new NotSupportedException($"SIMD path {Path} is not supported on this processor (best available: {Best}).");
        }

        return Path;
    }

    internal int ResolveThreads()
    {
        if (Threads < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "Threads must be >= 0 (0 = all processors).");
        }

        return Threads == 0 ? Environment.ProcessorCount : Threads;
    }
}
