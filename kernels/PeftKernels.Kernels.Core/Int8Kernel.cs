// Which inner loop runs the integer 4-bit decode GEMV (Quant4Int8Gemv): the managed SIMD code, or the
// native AVX512-VNNI rows (libpeftnative.so, kernels/PeftKernels.Kernels.Native). Both give the same bits.
namespace PeftKernels.Kernels;

/// <summary>Which inner loop computes the integer 4-bit GEMV's row dot products.</summary>
public enum Int8Kernel
{
    /// <summary>The native AVX512-VNNI rows where they can run (library built, CPU has them, Vector512 path), else managed.</summary>
    Auto,

    /// <summary>The native AVX512-VNNI rows (vpdpbusd); throws where they cannot run.</summary>
    Avx512Vnni,

    /// <summary>The managed SIMD rows of the chosen path (the fallback, for tests).</summary>
    Managed,
}
