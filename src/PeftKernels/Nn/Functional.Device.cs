// The ops on an accelerator: the same math through the GPU kernels (PeftKernels.Kernels.Gpu),
// chosen by the device of the op's inputs. Outputs stay on the device; small per-call host
// arrays (token ids, positions, rotary frequencies, labels) are uploaded, scratch that the
// caller never sees (rstd, lse) is freed after the accelerator is done with it, or kept by the
// backward closure when the op records. Backward mirrors the CPU closures: the gradient of a
// device-only tensor, and of a host parameter with a device mirror (LoRA A/B, an IA³ vector, a
// norm weight, a base weight in full fine-tuning), stays on the device (Tensor.DeviceGrad), where
// AdamWOptimizer steps it; host readers of Parameter.Grad get a lazy download.
// Embedding backward: dW[id, :] += dy[t, :] over the tokens t with that id, in token order
// (EmbeddingKernels.Backward, deterministic, no atomics); a tied lm_head adds its own dW.
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

    /// <summary>Throws when an op on an accelerator would have to record a gradient that devices do not implement.</summary>
    internal static void DeviceInferenceOnly(bool record, string op)
    {
        if (record)
        {
            throw new NotSupportedException($"{op}: this gradient is not implemented on a GPU device (a trainable base weight, bias or lora_B bias "
                + "under DoRA or next to extra adapter branches); train it on the cpu device, or run inference inside Tape.NoGrad().");
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

    /// <summary>A gradient buffer for <paramref name="t"/> on <paramref name="device"/>, or none (an empty view: the kernel skips it) when t needs no gradient.</summary>
    internal static MemoryBuffer1D<float, Stride1D.Dense>? GradBuffer(Device device, Tensor t) =>
        t.RequiresGrad ? device.Accelerator.Allocate1D<float>(t.Count) : null;

    /// <summary>
    /// Hands a freshly computed gradient (owned) to <paramref name="t"/>: a device-only tensor and a host parameter with a
    /// device mirror accumulate it on the device; a host tensor without a mirror gets it downloaded into its host Grad.
    /// </summary>
    internal static void GiveGrad(Tensor t, MemoryBuffer1D<float, Stride1D.Dense>? owned)
    {
        if (owned == null)
        {
            return;
        }

        if (!t.RequiresGrad)
        {
            owned.Dispose();
        }
        else if (t.LivesOnDeviceOnly || t.HasMirror)
        {
            t.AddDeviceGrad(owned);
        }
        else
        {
            owned.Accelerator.Synchronize();
            var host = owned.GetAsArray1D();
            owned.Dispose();
            Grad.AddOwned(t, host);
        }
    }

    private static Tensor EmbeddingOnDevice(ReadOnlySpan<int> ids, Tensor weight)
    {
        var device = weight.Device;
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
        if (Tape.ShouldRecord(weight))
        {
            var saved = ids.ToArray();
            Tape.Record(output, () =>
            {
                var dw = accelerator.Allocate1D<float>(weight.Count);
                EmbeddingKernels.Backward(accelerator, output.DeviceGrad, saved, dw.View, vocab, dim);
                GiveGrad(weight, dw);
            });
        }

        return output;
    }

    private static Tensor RmsNormOnDevice(Tensor x, Tensor weight, float eps)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        var rstd = accelerator.Allocate1D<float>(x.Rows);
        int n = x.Rows, dim = x.Columns;
        RmsNormKernels.Forward(accelerator, x.View(device), weight.View(device), eps, output.View(device), rstd.View, n, dim);
        accelerator.Synchronize();
        if (!Tape.ShouldRecord(x, weight))
        {
            rstd.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dx = GradBuffer(device, x);
            var dw = GradBuffer(device, weight);
            RmsNormKernels.Backward(accelerator, output.DeviceGrad, x.View(device), weight.View(device), rstd.View,
                dx?.View ?? default, dw?.View ?? default, n, dim);
            accelerator.Synchronize();
            rstd.Dispose();
            GiveGrad(x, dx);
            GiveGrad(weight, dw);
        });
        return output;
    }

    private static Tensor RopeOnDevice(Tensor x, int[] positions, float[] invFreq, int heads, int headDim)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        using (var pos = accelerator.Allocate1D(positions))
        using (var freq = accelerator.Allocate1D(invFreq))
        {
            RopeKernels.Forward(accelerator, x.View(device), pos.View, freq.View, output.View(device), positions.Length, heads, headDim);
            accelerator.Synchronize();
        }

        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = GradBuffer(device, x)!;
                using (var pos = accelerator.Allocate1D(positions))
                using (var freq = accelerator.Allocate1D(invFreq))
                {
                    RopeKernels.Backward(accelerator, output.DeviceGrad, pos.View, freq.View, dx.View, positions.Length, heads, headDim);
                    accelerator.Synchronize();
                }

                GiveGrad(x, dx);
            });
        }

        return output;
    }

    private static Tensor SwiGluOnDevice(Tensor gate, Tensor up)
    {
        var device = gate.Device;
        SameDevice(device, up, nameof(up));
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, gate.Shape);
        SwiGluKernels.Forward(accelerator, gate.View(device), up.View(device), output.View(device));
        if (Tape.ShouldRecord(gate, up))
        {
            Tape.Record(output, () =>
            {
                var dgate = accelerator.Allocate1D<float>(gate.Count);
                var dup = accelerator.Allocate1D<float>(up.Count);
                SwiGluKernels.Backward(accelerator, output.DeviceGrad, gate.View(device), up.View(device), dgate.View, dup.View);
                accelerator.Synchronize();
                GiveGrad(gate, dgate);
                GiveGrad(up, dup);
            });
        }

        return output;
    }

    private static Tensor AddOnDevice(Tensor a, Tensor b)
    {
        var device = a.Device;
        SameDevice(device, b, nameof(b));
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, a.Shape);
        AddKernels.Forward(accelerator, a.View(device), b.View(device), output.View(device));
        if (Tape.ShouldRecord(a, b))
        {
            Tape.Record(output, () =>
            {
                var dy = output.DeviceGrad;
                foreach (var input in a.RequiresGrad && b.RequiresGrad ? [a, b] : a.RequiresGrad ? new[] { a } : [b])
                {
                    var copy = accelerator.Allocate1D<float>(dy.Length);
                    copy.View.CopyFrom(dy);
                    accelerator.Synchronize();
                    GiveGrad(input, copy);
                }
            });
        }

        return output;
    }

    private static Tensor ScaleColumnsOnDevice(Tensor x, Tensor l)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        int n = x.Rows, dim = x.Columns;
        Ia3Kernels.ScaleColumns(accelerator, x.View(device), l.View(device), output.View(device), n, dim);
        if (Tape.ShouldRecord(x, l))
        {
            Tape.Record(output, () =>
            {
                var dx = GradBuffer(device, x);
                var dl = accelerator.Allocate1D<float>(dim);
                Ia3Kernels.ScaleColumnsBackward(accelerator, output.DeviceGrad, x.View(device), l.View(device), dx?.View ?? default, dl.View, n, dim);
                accelerator.Synchronize();
                GiveGrad(x, dx);
                GiveGrad(l, dl);
            });
        }

        return output;
    }

    private static Tensor AttentionOnDevice(Tensor q, Tensor k, Tensor v, int batch, int tq, int tk, int heads, int kvHeads, int headDim)
    {
        var device = q.Device;
        SameDevice(device, k, nameof(k));
        SameDevice(device, v, nameof(v));
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, q.Shape);
        float scale = 1f / MathF.Sqrt(headDim);
        var lse = accelerator.Allocate1D<float>((long)batch * heads * tq);
        AttentionKernels.Forward(accelerator, q.View(device), k.View(device), v.View(device), output.View(device), lse.View,
            batch, tq, tk, heads, kvHeads, headDim, scale);
        accelerator.Synchronize();
        if (!(Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad)))
        {
            lse.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dq = accelerator.Allocate1D<float>(q.Count);
            var dk = accelerator.Allocate1D<float>(k.Count);
            var dv = accelerator.Allocate1D<float>(v.Count);
            AttentionKernels.Backward(accelerator, output.DeviceGrad, q.View(device), k.View(device), v.View(device), output.View(device), lse.View,
                dq.View, dk.View, dv.View, batch, tq, tk, heads, kvHeads, headDim, scale);
            accelerator.Synchronize();
            lse.Dispose();
            GiveGrad(q, dq);
            GiveGrad(k, dk);
            GiveGrad(v, dv);
        });
        return output;
    }

    private static Tensor CrossEntropyOnDevice(Tensor logits, int[] labels, int count)
    {
        var device = logits.Device;
        var accelerator = device.Accelerator;
        int n = logits.Rows, vocab = logits.Columns;
        CrossEntropyKernels.CheckLabels(labels, vocab); // the launchers never download them
        var deviceLabels = accelerator.Allocate1D(labels);
        var lse = accelerator.Allocate1D<float>(n);
        double sum = labels.Length == 0 ? 0 : CrossEntropyKernels.Forward(accelerator, logits.View(device), deviceLabels.View, lse.View, n, vocab);
        accelerator.Synchronize();
        var output = new Tensor([count == 0 ? 0f : (float)(sum / count)], 1);
        if (!(Tape.ShouldRecord(logits) && count > 0))
        {
            deviceLabels.Dispose();
            lse.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            // The kernel works in place: the gradient starts as a copy of the logits.
            var dlogits = accelerator.Allocate1D<float>(logits.Count);
            dlogits.View.CopyFrom(logits.View(device));
            CrossEntropyKernels.BackwardInPlace(accelerator, dlogits.View, deviceLabels.View, lse.View, output.Grad![0] / count, n, vocab);
            accelerator.Synchronize();
            deviceLabels.Dispose();
            lse.Dispose();
            GiveGrad(logits, dlogits);
        });
        return output;
    }
}
