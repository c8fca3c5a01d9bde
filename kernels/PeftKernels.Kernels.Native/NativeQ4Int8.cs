// The integer 4-bit GEMV rows of libpeftnative.so (native/q4_int8_kernels.c: AVX512-VNNI vpdpbusd, which
// .NET cannot emit), and the processor check that decides, once, whether they can run:
//   AVX512-VNNI CPUID.(EAX=7, ECX=0):ECX[11], with the runtime's Avx512BW, Avx512Vbmi (vpermb) and
//   Avx512F.VL checks (which also cover the OS saving the zmm state).
// Zen 4, Ice Lake and Sapphire Rapids have all four; Cascade Lake lacks VBMI and keeps the managed path.
// A missing library, export or instruction is not an error: Rows is null and Status says why.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Native;

/// <summary>
/// Arguments of <c>peft_q4i8_vnni_rows</c> (the C struct q4i8_args, field for field): weight rows [j0, j0 + Rows)
/// against activation rows [0, N), y[r, j] written without bias.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct Q4Int8Args
{
    /// <summary>Packed codes of row j0.</summary>
    public byte* W;

    /// <summary>fp32 block absmax, indexed by element index &gt;&gt; Shift.</summary>
    public float* Absmax;

    /// <summary>Int8 activations [N, In], chunk pairs interleaved (the Vector512 layout).</summary>
    public sbyte* Q;

    /// <summary>Chunk scales [N, In / 32].</summary>
    public float* Sx;

    /// <summary>Scale vectors of the chunk pairs [N, In / 32 · 8].</summary>
    public float* SxPairs;

    /// <summary>y + j0 (row r at Y + r·Ldy).</summary>
    public float* Y;

    /// <summary>j0 · In.</summary>
    public long E0;

    /// <summary>Row stride of y (outFeatures).</summary>
    public long Ldy;

    /// <summary>Weight rows.</summary>
    public int Rows;

    /// <summary>Activation rows.</summary>
    public int N;

    /// <summary>Input features (a multiple of 32).</summary>
    public int In;

    /// <summary>log2(blocksize).</summary>
    public int Shift;

    /// <summary>1 when both chunks of every pair lie in one weight block.</summary>
    public int OnePairScale;

    /// <summary>Prefetch distance in bytes.</summary>
    public int Prefetch;

    /// <summary>The 16 code values as int8.</summary>
    public fixed sbyte Table[16];

    /// <summary>Double quantization: the 8-bit absmax code per weight block (Absmax is then unused); null otherwise.</summary>
    public byte* Codes;

    /// <summary>fp32 scale per 256 absmax codes.</summary>
    public float* Nested;

    /// <summary>The 256 values of the dynamic map.</summary>
    public float* Dynamic;

    /// <summary>Added to each product dynamic[code] · nested[block / 256].</summary>
    public float Offset;
}

/// <summary>The native AVX512-VNNI integer GEMV rows, if this process can run them (decided once).</summary>
internal static unsafe class NativeQ4Int8
{
    static NativeQ4Int8()
    {
        if (!PeftNative.Loaded)
        {
            Status = PeftNative.LibraryStatus;
        }
        else if (!HasAvx512Vnni)
        {
            Status = "the processor lacks AVX512-VNNI (CPUID.(7,0):ECX[11]) or AVX512-BW/VBMI/VL";
        }
        else
        {
            Rows = (delegate* unmanaged[SuppressGCTransition]<Q4Int8Args*, void>)PeftNative.Export("peft_q4i8_vnni_rows");
            Status = Rows == null ? "the library lacks the export peft_q4i8_vnni_rows" : "available";
        }
    }

    /// <summary>"available", or why the native rows cannot run.</summary>
    public static string Status { get; }

    /// <summary>True when <see cref="Rows"/> can run here.</summary>
    public static bool Available => Status == "available";

    /// <summary>peft_q4i8_vnni_rows (null when unavailable).</summary>
    public static delegate* unmanaged[SuppressGCTransition]<Q4Int8Args*, void> Rows { get; }

    /// <summary>CPUID.(EAX=7, ECX=0):ECX bit 11 (AVX512_VNNI) with AVX-512BW, VBMI and VL usable.</summary>
    public static bool HasAvx512Vnni =>
        Avx512BW.IsSupported && Avx512Vbmi.IsSupported && Avx512F.VL.IsSupported && X86Base.IsSupported &&
        X86Base.CpuId(0, 0).Eax >= 7 && (X86Base.CpuId(7, 0).Ecx & (1 << 11)) != 0;
}
