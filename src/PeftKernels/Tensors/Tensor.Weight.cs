// A tensor as a frozen weight operand of the kernels: the one place in the library that switches
// on a weight's storage type. The host operand wraps the tensor's own storage (fp32, bf16 bits,
// fp16 or 4-bit) without a copy; the device operand is the dense fp32 mirror (bf16 and fp16 were
// widened when uploaded) or the 4-bit mirror. Kernels then take one entry point per op and direction.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels;

public partial class Tensor
{
    /// <summary>This tensor, a weight [rows, cols], as the host kernels' frozen-weight operand (no copy).</summary>
    /// <exception cref="InvalidOperationException">The tensor is not 2-D.</exception>
    internal WeightOperand AsWeight()
    {
        var (rows, cols) = WeightDims();
        return DType switch
        {
            TensorDType.F32 => WeightOperand.F32(Data, rows, cols),
            TensorDType.BF16 => WeightOperand.Bf16(Bf16Bits, rows, cols),
            TensorDType.F16 => WeightOperand.F16(F16Values, rows, cols),
            _ => WeightOperand.Quant4(Quantized),
        };
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
