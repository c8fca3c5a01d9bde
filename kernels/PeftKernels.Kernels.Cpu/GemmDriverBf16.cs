// bf16 compute in the GEMM driver (KernelOptions.Compute = Bf16): the same blocked loops, threads
// and packers as fp32 (GemmDriver.cs), with the packed panels rounded to bf16 (Bf16Panels.cs) and
// one of three micro-kernels, chosen once per call (ResolveBf16):
//   Amx         32×32 from AMX-BF16 tiles (native; CPUID AMX-BF16 + AMX-TILE and Linux's permission)
//   Avx512Bf16  12×32, or 24×16 when n ≤ 16 (native vdpbf16ps; CPUID AVX512-BF16, SIMD path Vector512)
//   Managed     the fp32 FMA micro-kernel of the SIMD path on bf16-rounded panels (exact products)
// All three compute C = alpha·Σ bf16(A)·bf16(B) + beta·C (+ bias) with fp32 sums; they differ only in
// the order of the sums (vdpbf16ps adds two products per step). m ≤ 4 rows (decode) stay fp32: the
// GEMV path streams the weight once and is memory-bound, so bf16 arithmetic gains nothing there.
// KernelOptions.Bf16Kernel forces one (Managed: the fallback, for tests); PEFT_NATIVE=0 hides the library.
// The 12×32 kernel takes K blocks of up to 1024 (KcMax; fp32 kernels 512): its bf16 panels are half the
// bytes, so the A block (288 × 1024 × 2 B) and one B strip (64 KiB) still sit in Zen 4's 1 MiB L2, and C
// is read and written half as often (issue 18: 2048×4096×4096 rose from ~74 % to ~83 % of the bf16 peak
// in per-CPU-second terms). Plain row-major A and transposed B are packed by one native pass
// (Bf16Panels.cs, peft_bf16_pack_pairs) instead of an fp32 pack followed by in-place pairing.
// A frozen weight in op(B) (WeightPanels: LoRA's [W | B] / [W ; A], or Gemm's x·Wᵀ, dy·W) gets K blocks that
// end at the weight's last row, and with a WeightPanelCache its packed pair strips are kept after the first
// call and read in place on later ones (the pair kernels only; session 14: the LoRA step packed every
// frozen weight twice per step, 10–18 % of it).
using PeftKernels.Kernels.Native;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe partial class GemmDriver
{
    /// <summary><see cref="Run{TA, TB}(SimdPath, int, in TA, in TB, int, int, int, float, float, float*, int, float*, in GemmEpilogue)"/> at <paramref name="options"/>' compute precision.</summary>
    public static void Run<TA, TB>(in KernelOptions options, SimdPath path, int threads, in TA a, in TB b, int m, int n, int k, float alpha,
        float beta, float* c, int ldc, float* bias, in GemmEpilogue epilogue = default, in WeightPanels weight = default)
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        if (options.Compute != ComputePrecision.Bf16 || m <= RowDot.MaxRows)
        {
            Run(path, threads, a, b, m, n, k, alpha, beta, c, ldc, bias, epilogue);
            return;
        }

        switch (ResolveBf16(options.Bf16Kernel, path))
        {
            case Bf16Kernel.Amx:
                Run<AmxBf16Kernel, Bf16PairA<TA>, Bf16B<TB>>(threads, new(a), new(b, true), m, n, k, alpha, beta, c, ldc, bias, epilogue, weight);
                break;
            case Bf16Kernel.Avx512Bf16 when n <= Avx512Bf16NarrowKernel.NR:
                Run<Avx512Bf16NarrowKernel, Bf16PairA<TA>, Bf16B<TB>>(threads, new(a), new(b, true), m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
            case Bf16Kernel.Avx512Bf16:
                Run<Avx512Bf16Kernel, Bf16PairA<TA>, Bf16B<TB>>(threads, new(a), new(b, true), m, n, k, alpha, beta, c, ldc, bias, epilogue, weight);
                break;
            default:
                Run(path, threads, new Bf16RoundA<TA>(a), new Bf16B<TB>(b, false), m, n, k, alpha, beta, c, ldc, bias, epilogue);
                break;
        }
    }

    /// <summary>
    /// True when a bf16-compute product of more than <see cref="RowDot.MaxRows"/> rows with <paramref name="w"/> as op(B) and
    /// <paramref name="outFeatures"/> columns runs a native pair micro-kernel (AMX or AVX512-BF16 12×32, as
    /// <see cref="ResolveBf16"/> picks it) that reads the weight's kept panels (WeightPanelCache) instead of packing it: only then
    /// is the packed GEMM cheaper than reading the weight in place (BatchGemv) for a few dozen rows. False for fp32 compute, a
    /// weight without a cache, a call with the cache turned off, 4-bit weights and the managed fallback.
    /// </summary>
    /// <exception cref="NotSupportedException">A named native kernel cannot run here (as the GEMM itself would throw).</exception>
    internal static bool ReadsKeptBf16Panels(in WeightOperand w, int outFeatures, in KernelOptions options)
    {
        if (WeightPanels.Of(w, options) == null || w.Storage == WeightFormat.Q4)
        {
            return false;
        }

        var kernel = ResolveBf16(options.Bf16Kernel, options.ResolvePath());
        return kernel == Bf16Kernel.Amx || (kernel == Bf16Kernel.Avx512Bf16 && outFeatures > Avx512Bf16NarrowKernel.NR);
    }

    /// <summary>
    /// The bf16 micro-kernel a request runs on this machine at <paramref name="path"/>: Auto picks AMX, then
    /// AVX512-BF16 (on the Vector512 path), then Managed; a named native kernel that cannot run throws.
    /// </summary>
    /// <exception cref="NotSupportedException">Amx or Avx512Bf16 was named and cannot run here (the message says why).</exception>
    internal static Bf16Kernel ResolveBf16(Bf16Kernel requested, SimdPath path)
    {
        switch (requested)
        {
            case Bf16Kernel.Managed:
                return Bf16Kernel.Managed;
            case Bf16Kernel.Amx:
                return NativeBf16.AmxAvailable ? Bf16Kernel.Amx
                    : throw new NotSupportedException($"The AMX-BF16 kernel cannot run: {NativeBf16.AmxStatus}.");
            case Bf16Kernel.Avx512Bf16:
                if (!NativeBf16.AvxAvailable)
                {
                    throw new NotSupportedException($"The AVX512-BF16 kernel cannot run: {NativeBf16.AvxStatus}.");
                }

                return path == SimdPath.Vector512 ? Bf16Kernel.Avx512Bf16
                    : throw new NotSupportedException($"The AVX512-BF16 kernel needs the Vector512 SIMD path, not {path}.");
            default:
                return NativeBf16.AmxAvailable ? Bf16Kernel.Amx
                    : NativeBf16.AvxAvailable && path == SimdPath.Vector512 ? Bf16Kernel.Avx512Bf16
                    : Bf16Kernel.Managed;
        }
    }
}

/// <summary>Native AVX512-BF16 12×32 micro-kernel on bf16-pair panels.</summary>
internal readonly unsafe struct Avx512Bf16Kernel : IMicroKernel
{
    public static int MR => 12;

    public static int NR => 32;

    public static SimdPath Path => SimdPath.Vector512;

    public static int KcMax => 1024;

    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias) =>
        NativeBf16.Avx12x32.Fn((ushort*)a, (ushort*)b, (kc + 1) / 2, c, ldc, alpha, beta, bias);
}

/// <summary>Native AVX512-BF16 24×16 micro-kernel (outputs at most 16 wide: LoRA's rank-sized GEMMs).</summary>
internal readonly unsafe struct Avx512Bf16NarrowKernel : IMicroKernel
{
    public static int MR => 24;

    public static int NR => 16;

    public static SimdPath Path => SimdPath.Vector512;

    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias) =>
        NativeBf16.Avx24x16.Fn((ushort*)a, (ushort*)b, (kc + 1) / 2, c, ldc, alpha, beta, bias);
}

/// <summary>Native AMX-BF16 32×32 micro-kernel (four 16×16 accumulator tiles).</summary>
internal readonly unsafe struct AmxBf16Kernel : IMicroKernel
{
    public static int MR => 32;

    public static int NR => 32;

    public static SimdPath Path => SimdPath.Vector512;

    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias) =>
        NativeBf16.Amx32x32.Fn((ushort*)a, (ushort*)b, (kc + 1) / 2, c, ldc, alpha, beta, bias);
}
