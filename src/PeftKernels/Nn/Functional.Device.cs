// The ops on an accelerator: the same math through the GPU kernels (PeftKernels.Kernels.Gpu),
// chosen by the device of the op's inputs. Outputs stay on the device; small per-call host
// arrays (token ids, positions, rotary frequencies, labels) are uploaded, scratch that the
// caller never sees (rstd, lse) is freed after the accelerator is done with it. Inference
// only for now: an op that would have to record a backward node throws.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Nn;

public static partial class Functional
{
    /// <summary>A new uninitialised fp32 tensor on <paramref name="device"/>.</summary>
    internal static Tensor DeviceTensor(Device device, int[] shape) =>
        new(device, device.Accelerator.Allocate1D<float>(shape.Aggregate(1L, (a, d) => a * d)), shape);

    /// <summary>Throws when an op on an accelerator would have to record backward (not implemented on devices yet).</summary>
    internal static void DeviceInferenceOnly(bool record, string op)
    {
        if (record)
        {
            throw new NotSupportedException($"{op}: backward on a GPU device is not implemented yet; train on the cpu device, or run inference inside Tape.NoGrad().");
        }
    }

    /// <summary>Checks that <paramref name="other"/> is on <paramref name="device"/>, naming it otherwise.</summary>
    internal static void SameDevice(Device device, Tensor other, string name)
    {
        if (!ReferenceEquals(device, other.Device))
        {
            throw new ArgumentException($"{name} is on {other.Device} but the op runs on {device}; move tensors and the model with To(device) first.", name);
        }
    }

    private static Tensor EmbeddingOnDevice(ReadOnlySpan<int> ids, Tensor weight)
    {
        var device = weight.Device;
        DeviceInferenceOnly(Tape.ShouldRecord(weight), "embedding");
        int vocab = weight.Shape[0], dim = weight.Shape[1];
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= (uint)vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[t]} at position {t} is outside the vocabulary [0, {vocab}).");
            }
        }

        var output = DeviceTensor(device, [ids.Length, dim]);
        if (ids.Length == 0)
        {
            return output;
        }

        var accelerator = device.Accelerator;
        using var deviceIds = accelerator.Allocate1D(ids.ToArray());
        EmbeddingKernels.Forward(accelerator, weight.View(device), deviceIds.View, output.View(device), ids.Length, vocab, dim);
        accelerator.Synchronize();
        return output;
    }

    private static Tensor RmsNormOnDevice(Tensor x, Tensor weight, float eps)
    {
        var device = x.Device;
        DeviceInferenceOnly(Tape.ShouldRecord(x, weight), "RMSNorm");
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        using var rstd = accelerator.Allocate1D<float>(x.Rows);
        RmsNormKernels.Forward(accelerator, x.View(device), weight.View(device), eps, output.View(device), rstd.View, x.Rows, x.Columns);
        accelerator.Synchronize();
        return output;
    }

    private static Tensor RopeOnDevice(Tensor x, int[] positions, float[] invFreq, int heads, int headDim)
    {
        var device = x.Device;
        DeviceInferenceOnly(Tape.ShouldRecord(x), "RoPE");
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        using var pos = accelerator.Allocate1D(positions);
        using var freq = accelerator.Allocate1D(invFreq);
        RopeKernels.Forward(accelerator, x.View(device), pos.View, freq.View, output.View(device), positions.Length, heads, headDim);
        accelerator.Synchronize();
        return output;
    }

    private static Tensor SwiGluOnDevice(Tensor gate, Tensor up)
    {
        var device = gate.Device;
        SameDevice(device, up, nameof(up));
        DeviceInferenceOnly(Tape.ShouldRecord(gate, up), "SwiGLU");
        var output = DeviceTensor(device, gate.Shape);
        SwiGluKernels.Forward(device.Accelerator, gate.View(device), up.View(device), output.View(device));
        return output;
    }

    private static Tensor AddOnDevice(Tensor a, Tensor b)
    {
        var device = a.Device;
        SameDevice(device, b, nameof(b));
        DeviceInferenceOnly(Tape.ShouldRecord(a, b), "add");
        var output = DeviceTensor(device, a.Shape);
        AddKernels.Forward(device.Accelerator, a.View(device), b.View(device), output.View(device));
        return output;
    }

    private static Tensor ScaleColumnsOnDevice(Tensor x, Tensor l)
    {
        var device = x.Device;
        DeviceInferenceOnly(Tape.ShouldRecord(x, l), "IA³ scaling");
        var output = DeviceTensor(device, x.Shape);
        Ia3Kernels.Forward(device.Accelerator, x.View(device), l.View(device), output.View(device), x.Rows, x.Columns);
        return output;
    }

    private static Tensor AttentionOnDevice(Tensor q, Tensor k, Tensor v, int batch, int tq, int tk, int heads, int kvHeads, int headDim)
    {
        var device = q.Device;
        SameDevice(device, k, nameof(k));
        SameDevice(device, v, nameof(v));
        DeviceInferenceOnly(Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad), "attention");
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, q.Shape);
        using var lse = accelerator.Allocate1D<float>((long)batch * heads * tq);
        AttentionKernels.Forward(accelerator, q.View(device), k.View(device), v.View(device), output.View(device), lse.View,
            batch, tq, tk, heads, kvHeads, headDim, 1f / MathF.Sqrt(headDim));
        accelerator.Synchronize();
        return output;
    }

    private static Tensor CrossEntropyOnDevice(Tensor logits, int[] labels, int count)
    {
        var device = logits.Device;
        DeviceInferenceOnly(Tape.ShouldRecord(logits) && count > 0, "cross-entropy");
        var accelerator = device.Accelerator;
        using var deviceLabels = accelerator.Allocate1D(labels);
        using var lse = accelerator.Allocate1D<float>(logits.Rows);
        double sum = labels.Length == 0 ? 0 : CrossEntropyKernels.Forward(accelerator, logits.View(device), deviceLabels.View, lse.View, logits.Rows, logits.Columns);
        accelerator.Synchronize();
        return new Tensor([count == 0 ? 0f : (float)(sum / count)], 1);
    }
}
