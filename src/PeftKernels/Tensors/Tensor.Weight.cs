// A tensor as a frozen weight operand of the kernels: the one place in the library that switches
// on a weight's storage type. The host operand wraps the tensor's own storage (fp32, bf16 bits,
// fp16 or 4-bit) without a copy; the device operand is the dense fp32 mirror (bf16 and fp16 were
// widened when uploaded) or the 4-bit mirror. Kernels then take one entry point per op and direction.
// Kept panels: a frozen (RequiresGrad false) fp32 / bf16 / fp16 tensor hands the host kernels a
// WeightPanelCache with its operand, so bf16-compute GEMMs pack it into bf16 pairs once, not twice per
// training step (docs/performance.md, session 14). The cache holds the values of one version of the
// tensor: every hand-out of the mutable storage (Data, Bf16Bits, F16Values: the only ways to write it)
// and MarkChanged() bump the version, and the next operand drops the panels of an older one. A writer
// that keeps the array from an earlier hand-out and writes into it after a bf16 GEMM read the tensor
// must call MarkChanged(). KernelOptions.NoWeightPanelCache turns the reuse off per call.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels;

public partial class Tensor
{
    private long version;
    private long panelVersion = -1;
    private WeightPanelCache? panelCache;

    /// <summary>This tensor, a weight [rows, cols], as the host kernels' frozen-weight operand (no copy).</summary>
    /// <exception cref="InvalidOperationException">The tensor is not 2-D.</exception>
    internal WeightOperand AsWeight()
    {
        var (rows, cols) = WeightDims();
        return DType switch
        {
            TensorDType.F32 => WeightOperand.F32(ReadData(), rows, cols).WithPanelCache(KeptPanels()),
            TensorDType.BF16 => WeightOperand.Bf16(bf16, rows, cols).WithPanelCache(KeptPanels()),
            TensorDType.F16 => WeightOperand.F16(f16, rows, cols).WithPanelCache(KeptPanels()),
            _ => WeightOperand.Quant4(Quantized),
        };
    }

    /// <summary>
    /// Records that the values may have changed (a write through an array obtained earlier from <see cref="Data"/>,
    /// <see cref="Bf16Bits"/> or <see cref="F16Values"/>): bf16-compute GEMMs then pack the tensor afresh instead of
    /// reusing panels kept from before. Reading those properties already does this.
    /// </summary>
    public void MarkChanged() => Interlocked.Increment(ref version);

    /// <summary>Bytes of the bf16 panels kept for this tensor as a frozen weight (0: none; see <see cref="MarkChanged"/>).</summary>
    internal long KeptPanelBytes => panelCache?.Bytes ?? 0;

    /// <summary>The panel cache of this frozen weight, cleared first when the tensor changed since it was filled; null while it trains.</summary>
    private WeightPanelCache? KeptPanels()
    {
        if (RequiresGrad)
        {
            // A trained weight changes every step: keeping its panels would only cost memory.
            panelCache?.Clear();
            return null;
        }

        var cache = panelCache ?? Interlocked.CompareExchange(ref panelCache, new WeightPanelCache(), null) ?? panelCache;
        long now = Interlocked.Read(ref version);
        if (Interlocked.Exchange(ref panelVersion, now) != now)
        {
            cache.Clear();
        }

        return cache;
    }

    /// <summary>This tensor, a weight [rows, cols], as the device kernels' frozen-weight operand on <paramref name="device"/>.</summary>
    /// <exception cref="InvalidOperationException">The tensor is not 2-D, or not on <paramref name="device"/>.</exception>
    internal DeviceWeightOperand DeviceWeight(Device device)
    {
        if (DType == TensorDType.Q4)
        {
            return DeviceWeightOperand.Quant4(QuantView(device));
        }

        var (rows, cols) = WeightDims();
        return DeviceWeightOperand.Dense(View(device), rows, cols);
    }

    private (int Rows, int Cols) WeightDims() => Shape.Length == 2
        ? (Shape[0], Shape[1])
        : throw new InvalidOperationException($"a weight operand is 2-D [out, in]; tensor is [{string.Join(", ", Shape)}] ({DType}).");
}
