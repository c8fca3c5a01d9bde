// Loaded kernels are cached per accelerator: loading one (IL → ILGPU IR → PTX, then the
// driver's JIT) costs milliseconds to seconds, launching it microseconds. Each launcher class
// keys its own holder type; the table is weak on the accelerator, so an accelerator that is
// disposed and collected takes its kernels with it.
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

internal static class GpuKernelCache
{
    /// <summary>The <typeparamref name="T"/> loaded for <paramref name="accelerator"/>, loading it on first use.</summary>
    public static T Get<T>(Accelerator accelerator, ConditionalWeakTable<Accelerator, T>.CreateValueCallback load)
        where T : class =>
        Table<T>.Entries.GetValue(accelerator, load);

    private static class Table<T>
        where T : class
    {
        public static readonly ConditionalWeakTable<Accelerator, T> Entries = new();
    }
}

/// <summary>
/// The code tables on the device, uploaded once per accelerator: NF4 (offset 0), FP4 (16) and
/// the 8-bit dynamic map of double quantization (32, 256 entries). Kernels cannot read managed
/// arrays, so the tables travel as a view.
/// </summary>
internal sealed class GpuTables
{
    public const int Nf4Offset = 0;
    public const int Fp4Offset = 16;
    public const int DynamicOffset = 32;

    private readonly DeviceArray<float> buffer;

    private GpuTables(Accelerator accelerator)
    {
        float[] all = [.. Quant4Codes.Nf4, .. Quant4Codes.Fp4, .. Quant4Codes.Dynamic];
        buffer = accelerator.Upload(all);
    }

    public FloatView Nf4 => buffer.View.SubView(Nf4Offset, 16);

    public FloatView Fp4 => buffer.View.SubView(Fp4Offset, 16);

    public FloatView Dynamic => buffer.View.SubView(DynamicOffset, 256);

    public static GpuTables For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new GpuTables(a));

    public FloatView Table(Quant4Type type) => type == Quant4Type.Nf4 ? Nf4 : Fp4;
}
