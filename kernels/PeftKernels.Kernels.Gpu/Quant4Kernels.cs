// 4-bit (NF4/FP4) weights on the GPU, bitsandbytes layout (QuantizedWeight, BlockwiseQuantReference):
//   element e of a [rows, cols] weight: code = nibble e of the packed bytes (byte e/2, high nibble
//   first), value = table[code] · absmax[e / blocksize], one fp32 product.
//   Double quantization: absmax[i] = dyn[code_i] · nested[i / 256] + offset, a product then a sum,
//   each rounded to fp32 (mul.rn / add.rn on CUDA, so no FMA contraction): bit-identical to the CPU.
// Quant4View is the device-side weight every 4-bit GPU kernel takes (fp32 absmax; Quant4Buffers
// uploads a QuantizedWeight and decodes double-quantized scales on the device once).
// Dequantize: one thread per packed byte (two outputs), consecutive threads write consecutive pairs.
namespace PeftKernels.Kernels.Gpu;

/// <summary>A 4-bit weight [rows, cols] on the device: packed codes and one fp32 absmax per block.</summary>
public readonly struct Quant4View
{
    /// <summary>Creates the view, validating every length.</summary>
    /// <param name="packed">Packed codes, (rows·cols + 1) / 2 bytes; must start 4-byte aligned (e.g. a whole buffer) for the GEMV fast path.</param>
    /// <param name="absmax">fp32 absmax, ceil(rows·cols / blocksize) values.</param>
    /// <param name="type">NF4 or FP4.</param>
    /// <param name="blocksize">Elements per block: a power of two in 32..4096.</param>
    /// <param name="rows">Rows (out features of a linear weight).</param>
    /// <param name="cols">Columns (in features).</param>
    public Quant4View(ByteView packed, FloatView absmax, Quant4Type type, int blocksize, int rows, int cols)
    {
        Check.Require(Quant4Blocks.IsValidBlocksize(blocksize), nameof(blocksize), $"blocksize must be a power of two in 32..4096, got {blocksize}.");
        Check.NonNegative(rows, nameof(rows));
        Check.NonNegative(cols, nameof(cols));
        long count = (long)rows * cols;
        GpuCheck.FitsInt(count, "w");
        Check.Length(nameof(packed), packed.Length, (count + 1) / 2, "(rows·cols + 1) / 2");
        Check.Length(nameof(absmax), absmax.Length, Quant4Blocks.BlockCount(count, blocksize), "ceil(rows·cols / blocksize)");
        Packed = packed;
        Absmax = absmax;
        Type = type;
        Blocksize = blocksize;
        Rows = rows;
        Cols = cols;
    }

    /// <summary>Packed codes, two per byte, first element in the high nibble.</summary>
    public ByteView Packed { get; }

    /// <summary>fp32 absmax per block.</summary>
    public FloatView Absmax { get; }

    /// <summary>NF4 or FP4.</summary>
    public Quant4Type Type { get; }

    /// <summary>Elements per block.</summary>
    public int Blocksize { get; }

    /// <summary>Rows.</summary>
    public int Rows { get; }

    /// <summary>Columns.</summary>
    public int Cols { get; }

    /// <summary>Elements (rows·cols).</summary>
    public long Count => (long)Rows * Cols;

    internal int BlockShift => System.Numerics.BitOperations.Log2((uint)Blocksize);
}

/// <summary>Device buffers of a <see cref="QuantizedWeight"/>: packed codes and fp32 absmax (double-quantized scales decoded on the device).</summary>
public sealed class Quant4Buffers : IDisposable
{
    private readonly DeviceArray<byte> packed;
    private readonly DeviceArray<float> absmax;

    private Quant4Buffers(DeviceArray<byte> packed, DeviceArray<float> absmax, Quant4View view)
    {
        this.packed = packed;
        this.absmax = absmax;
        View = view;
    }

    /// <summary>The weight as the GPU kernels take it.</summary>
    public Quant4View View { get; }

    /// <summary>Uploads a 1-D or 2-D quantized weight ([cols] is one row) into pooled device arrays; the upload and the scale decoding are queued (no wait).</summary>
    public static Quant4Buffers Upload(Accelerator accelerator, QuantizedWeight weight)
    {
        GpuCheck.NotNull(accelerator);
        ArgumentNullException.ThrowIfNull(weight);
        Check.Require(weight.Shape.Length is 1 or 2, nameof(weight), $"weight has shape [{string.Join(", ", weight.Shape)}]; the GPU kernels take [rows, cols] or [cols].");
        int rows = weight.Shape.Length == 2 ? weight.Shape[0] : 1, cols = weight.Shape[^1];
        var packed = accelerator.Upload(weight.Packed);
        DeviceArray<float> absmax;
        if (weight.IsNested)
        {
            absmax = accelerator.Rent<float>(weight.NestedCodes!.Length);
            using var codes = accelerator.Upload(weight.NestedCodes);
            using var nested = accelerator.Upload(weight.NestedAbsmax!);
            Quant4Kernels.DequantizeNested(accelerator, codes.View, nested.View, weight.NestedOffset, absmax.View);
        }
        else
        {
            absmax = accelerator.Upload(weight.Absmax!);
        }

        return new Quant4Buffers(packed, absmax, new Quant4View(packed.View, absmax.View, weight.Type, weight.Blocksize, rows, cols));
    }

    /// <summary>Hands the device arrays back to the pool.</summary>
    public void Dispose()
    {
        packed.Dispose();
        absmax.Dispose();
    }
}

/// <summary>4-bit dequantization and the decoding of double-quantized scales on an ILGPU accelerator.</summary>
public static class Quant4Kernels
{
    /// <summary>output[e] = table[code e] · absmax[e / blocksize] for every element of <paramref name="w"/> (fp32, bit-identical to the CPU).</summary>
    public static void Dequantize(Accelerator accelerator, in Quant4View w, FloatView output)
    {
        GpuCheck.NotNull(accelerator);
        Check.Length(nameof(output), output.Length, w.Count, "rows·cols of w");
        if (w.Count == 0)
        {
            return;
        }

        var k = Loaded.For(accelerator);
        k.Dequantize((int)w.Packed.Length, w.Packed, w.Absmax, GpuTables.For(accelerator).Table(w.Type), output, (int)w.Count, w.BlockShift);
    }

    /// <summary>absmax[i] = dyn[codes[i]] · nestedAbsmax[i / 256] + offset (two fp32 roundings, no FMA): double-quantized scales to fp32.</summary>
    public static void DequantizeNested(Accelerator accelerator, ByteView codes, FloatView nestedAbsmax, float offset, FloatView absmax)
    {
        GpuCheck.NotNull(accelerator);
        Check.Length(nameof(absmax), absmax.Length, codes.Length, "codes length");
        Check.Length(nameof(nestedAbsmax), nestedAbsmax.Length, Quant4Blocks.BlockCount(codes.Length, Quant4Blocks.NestedBlocksize), "ceil(codes length / 256)");
        GpuCheck.FitsInt(codes.Length, nameof(codes));
        if (codes.Length == 0)
        {
            return;
        }

        Loaded.For(accelerator).Nested((int)codes.Length, codes, nestedAbsmax, GpuTables.For(accelerator).Dynamic, offset, absmax);
    }

    internal static void DequantizeKernel(Index1D i, ByteView packed, FloatView absmax, FloatView table, FloatView output, int count, int blockShift)
    {
        int e = 2 * i, code = packed[i];
        output[e] = table[code >> 4] * absmax[e >> blockShift];
        if (e + 1 < count)
        {
            output[e + 1] = table[code & 0xF] * absmax[(e + 1) >> blockShift];
        }
    }

    internal static void NestedKernel(Index1D i, ByteView codes, FloatView nested, FloatView dynamic, float offset, FloatView absmax) =>
        absmax[i] = GpuMath.AddRn(GpuMath.MulRn(dynamic[codes[i]], nested[i >> 8]), offset);

    private sealed class Loaded
    {
        public readonly Action<Index1D, ByteView, FloatView, FloatView, FloatView, int, int> Dequantize;
        public readonly Action<Index1D, ByteView, FloatView, FloatView, float, FloatView> Nested;

        private Loaded(Accelerator accelerator)
        {
            Dequantize = accelerator.LoadAutoGroupedStreamKernel<Index1D, ByteView, FloatView, FloatView, FloatView, int, int>(DequantizeKernel);
            Nested = accelerator.LoadAutoGroupedStreamKernel<Index1D, ByteView, FloatView, FloatView, float, FloatView>(NestedKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
