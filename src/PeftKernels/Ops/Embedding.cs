// Embedding: rows of a table gathered by token id.
//   forward   y[t, :] = W[ids[t], :]            W [vocab, dim] fp32 / bf16 / fp16, ids [n], y [n, dim] fp32
//   backward  dW[ids[t], :] += dy[t, :]         a scatter-add in token order (repeated ids accumulate)
// Token ids are checked on the host (by the CPU kernel, or before upload for the GPU kernel).
// CPU: Kernels.Cpu.Embedding; GPU: EmbeddingKernels (device dW built deterministically, no atomics; a tied
// lm_head adds its own dW). The module with LoRA adapters is Nn/Embedding.cs.
using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>y [ids.Length, dim] = the rows of a host table of any float storage (fp32, bf16, fp16) selected by <paramref name="ids"/>; no tape, no allocation.</summary>
    /// <exception cref="NotSupportedException">The table is stored in another dtype.</exception>
    internal static void EmbeddingRows(ReadOnlySpan<int> ids, Tensor weight, Span<float> y)
    {
        int vocab = weight.Shape[0], dim = weight.Shape[1];
        switch (weight.DType)
        {
            case TensorDType.F32:
                Kernels.Cpu.Embedding.Forward(weight.Data, ids, y, vocab, dim);
                break;
            case TensorDType.F16:
                Kernels.Cpu.Embedding.Forward(weight.F16Values, ids, y, vocab, dim);
                break;
            case TensorDType.BF16:
                Kernels.Cpu.Embedding.Forward(weight.Bf16Bits, ids, y, vocab, dim);
                break;
            default:
                throw new NotSupportedException($"embedding weight of dtype {weight.DType} is not supported (F32, BF16 or F16).");
        }
    }

    /// <summary>Rows of <paramref name="weight"/> [vocab, dim] selected by <paramref name="ids"/>: [ids.Length, dim].</summary>
    public static Tensor Embedding(ReadOnlySpan<int> ids, Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2)
        {
            throw new ArgumentException($"embedding weight must be 2-D [vocab, dim]; got [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        int vocab = weight.Shape[0], dim = weight.Shape[1];
        if (weight.Device.IsGpu)
        {
            return EmbeddingOnDevice(ids, weight);
        }

        var y = new float[(long)ids.Length * dim];
        EmbeddingRows(ids, weight, y);
        var output = new Tensor(y, ids.Length, dim);
        if (Tape.ShouldRecord(weight))
        {
            var saved = ids.ToArray();
            Tape.Record(output, () => Kernels.Cpu.Embedding.Backward(output.Grad!, saved, weight.GradOrCreate(), vocab, dim));
        }

        return output;
    }

    private static Tensor EmbeddingOnDevice(ReadOnlySpan<int> ids, Tensor weight)
    {
        var device = weight.Device;
        int vocab = weight.Shape[0], dim = weight.Shape[1];
        EmbeddingKernels.CheckIds(ids, vocab); // the CPU kernel checks them itself; the GPU kernel cannot
        var output = OpChecks.DeviceTensor(device, [ids.Length, dim]);
        if (ids.Length == 0)
        {
            return output;
        }

        var accelerator = device.Accelerator;
        using var deviceIds = accelerator.Upload(ids.ToArray());
        EmbeddingKernels.Forward(accelerator, weight.View(device), deviceIds.View, output.View(device), ids.Length, vocab, dim);
        if (Tape.ShouldRecord(weight))
        {
            var saved = ids.ToArray();
            Tape.Record(output, () =>
            {
                var dw = accelerator.Rent<float>(weight.Count);
                EmbeddingKernels.Backward(accelerator, output.DeviceGrad, saved, dw.View, vocab, dim);
                DeviceGrad.Give(weight, dw);
            });
        }

        return output;
    }
}
