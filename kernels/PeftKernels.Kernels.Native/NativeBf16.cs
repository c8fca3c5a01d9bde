// The bf16 kernels of libpeftnative.so (native/bf16_kernels.c; the library is loaded by PeftNative.cs):
// checks the processor with CPUID and hands out unmanaged function pointers to the micro-kernels it can run.
//   AVX512-BF16: CPUID.(EAX=7, ECX=1):EAX[5], with AVX-512F usable (the runtime's Avx512F check covers
//                the OS saving the zmm state).
//   AMX-BF16:    CPUID.(EAX=7, ECX=0):EDX[22] (AMX-BF16) and EDX[24] (AMX-TILE), and Linux granting the
//                tile-data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) returning 0).
// PEFT_NATIVE=0 in the environment makes PeftNative report no library (the managed path everywhere).
// A missing library, a missing export or a processor without the instructions is not an error: the
// matching property is null and Unavailable says why, so callers fall back to managed code.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Native;

/// <summary>
/// A bf16 micro-kernel: C[MR, NR] = alpha · Σ A·B + beta · C (+ bias), A and B packed as bf16 pairs
/// along K (see native/bf16_kernels.c), <c>kpairs</c> = ⌈kc / 2⌉.
/// </summary>
internal unsafe readonly struct Bf16KernelPointer(delegate* unmanaged[SuppressGCTransition]<ushort*, ushort*, int, float*, long, float, float, float*, void> fn)
{
    public readonly delegate* unmanaged[SuppressGCTransition]<ushort*, ushort*, int, float*, long, float, float, float*, void> Fn = fn;

    public bool IsNull => Fn == null;
}

/// <summary>The native bf16 kernels this process can run, decided once.</summary>
internal static unsafe class NativeBf16
{
    /// <summary>File name of the library, next to the assemblies.</summary>
    public const string LibraryName = PeftNative.LibraryName;

    static NativeBf16()
    {
        if (!PeftNative.Loaded)
        {
            AvxStatus = AmxStatus = PeftNative.LibraryStatus;
            return;
        }

        if (!HasAvx512Bf16)
        {
            AvxStatus = "the processor lacks AVX512-BF16 (CPUID.(7,1):EAX[5]) or AVX-512F";
        }
        else
        {
            Avx12x32 = Load("peft_bf16_avx512_12x32");
            Avx24x16 = Load("peft_bf16_avx512_24x16");
            var peak = Export("peft_bf16_avx512_peak");
            AvxPeak = (delegate* unmanaged<long, float>)peak;
            if (Avx512BW.IsSupported)
            {
                PackPairs = (delegate* unmanaged[SuppressGCTransition]<float*, long, int, int, int, uint*, void>)Export("peft_bf16_pack_pairs");
            }

            AvxStatus = Avx12x32.IsNull || Avx24x16.IsNull || peak == 0 ? "the library lacks the AVX512-BF16 exports" : "available";
        }

        if (!HasAmxBf16)
        {
            AmxStatus = "the processor lacks AMX-BF16/AMX-TILE (CPUID.(7,0):EDX[22], EDX[24])";
        }
        else
        {
            var request = (delegate* unmanaged<int>)Export("peft_amx_request_permission");
            if (request == null)
            {
                AmxStatus = "the library lacks the AMX exports";
            }
            else if (request() != 0)
            {
                AmxStatus = "Linux refused the AMX tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
            }
            else
            {
                Amx32x32 = Load("peft_bf16_amx_32x32");
                var peak = Export("peft_bf16_amx_peak");
                AmxPeak = (delegate* unmanaged<long, float>)peak;
                AmxStatus = Amx32x32.IsNull || peak == 0 ? "the library lacks the AMX exports" : "available";
            }
        }
    }

    /// <summary>"loaded &lt;path&gt;", or why there is no library.</summary>
    public static string LibraryStatus => PeftNative.LibraryStatus;

    /// <summary>"available", or why the AVX512-BF16 kernels cannot run.</summary>
    public static string AvxStatus { get; }

    /// <summary>"available", or why the AMX-BF16 kernel cannot run.</summary>
    public static string AmxStatus { get; }

    /// <summary>True when the AVX512-BF16 kernels can run here.</summary>
    public static bool AvxAvailable => AvxStatus == "available";

    /// <summary>True when the AMX-BF16 kernel can run here.</summary>
    public static bool AmxAvailable => AmxStatus == "available";

    /// <summary>12 × 32 AVX512-BF16 kernel (null when unavailable).</summary>
    public static Bf16KernelPointer Avx12x32 { get; }

    /// <summary>24 × 16 AVX512-BF16 kernel for outputs at most 16 wide (null when unavailable).</summary>
    public static Bf16KernelPointer Avx24x16 { get; }

    /// <summary>32 × 32 AMX-BF16 kernel (null when unavailable).</summary>
    public static Bf16KernelPointer Amx32x32 { get; }

    /// <summary>
    /// Pair packer of K-contiguous rows (src, ld, rows, kc, width, dst): dst[q·width + i] = bf16 pair of
    /// src[i·ld + 2q], src[i·ld + 2q + 1], rows ≤ i &lt; width zero; null without AVX512-BF16/BW or the export.
    /// </summary>
    public static delegate* unmanaged[SuppressGCTransition]<float*, long, int, int, int, uint*, void> PackPairs { get; }

    /// <summary>24 vdpbf16ps chains × steps (64 flops each); returns a sum.</summary>
    public static delegate* unmanaged<long, float> AvxPeak { get; }

    /// <summary>4 tile products × steps (16384 flops each); returns one sum.</summary>
    public static delegate* unmanaged<long, float> AmxPeak { get; }

    /// <summary>CPUID.(EAX=7, ECX=1):EAX bit 5 (AVX512_BF16) with AVX-512F usable.</summary>
    public static bool HasAvx512Bf16 =>
        Avx512F.IsSupported && X86Base.IsSupported && X86Base.CpuId(0, 0).Eax >= 7 && (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0;

    /// <summary>CPUID.(EAX=7, ECX=0):EDX bits 22 (AMX-BF16) and 24 (AMX-TILE).</summary>
    public static bool HasAmxBf16 =>
        X86Base.IsSupported && X86Base.CpuId(0, 0).Eax >= 7 && (X86Base.CpuId(7, 0).Edx & ((1 << 22) | (1 << 24))) == ((1 << 22) | (1 << 24));

    private static IntPtr Export(string name) => PeftNative.Export(name);

    private static Bf16KernelPointer Load(string name) =>
        new((delegate* unmanaged[SuppressGCTransition]<ushort*, ushort*, int, float*, long, float, float, float*, void>)Export(name));
}
