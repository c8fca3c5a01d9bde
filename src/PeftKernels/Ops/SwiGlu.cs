// SwiGLU gating of the Llama MLP, element-wise over gate and up of the same shape:
//   y = silu(gate) ⊙ up,  silu(g) = g·σ(g)
//   d_up = dy ⊙ silu(gate);  d_gate = dy ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate)))
// CPU: Kernels.Cpu.SwiGlu; GPU: SwiGluKernels.
// SwiGluIntoInputs (host, internal): the same op, but the backward writes d_gate and d_up over gate's and
// up's storage instead of two fresh buffers. For temporaries that no other node reads after this op's
// backward (MixLoRA's gathered [k·n, inter] rows): it saves two large allocations per step. The kernel
// reads each element before it writes it, so the aliasing is safe. Its output's storage comes from
// ScratchArrays, and the backward returns it and the output's gradient there once it has run: every node
// that reads the output was recorded after this one and has run by then (MixLoRA's routed sum and down
// LoRA), and the caller guarantees nothing reads the output afterwards.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>silu(gate) ⊙ up, element-wise.</summary>
    public static Tensor SwiGlu(Tensor gate, Tensor up, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(gate);
        ArgumentNullException.ThrowIfNull(up);
        OpChecks.SameShape(gate, up, "gate", "up");
        if (gate.Device.IsGpu)
        {
            return SwiGluOnDevice(gate, up);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)gate.Count));
        Kernels.Cpu.SwiGlu.Forward(gate.Data, up.Data, y, options);
        var output = new Tensor(y, gate.Shape);
        if (Tape.ShouldRecord(gate, up))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                var dgate = GC.AllocateUninitializedArray<float>(y.Length);
                var dup = GC.AllocateUninitializedArray<float>(y.Length);
                Kernels.Cpu.SwiGlu.Backward(dy, gate.Data, up.Data, dgate, dup, options);
                Grad.AddOwned(gate, dgate);
                Grad.AddOwned(up, dup);
            });
        }

        return output;
    }

    /// <summary>
    /// silu(gate) ⊙ up on the host, whose backward overwrites <paramref name="gate"/>'s and <paramref name="up"/>'s storage with
    /// their gradients: only for temporaries whose values no other node reads once this op's backward has run.
    /// </summary>
    internal static Tensor SwiGluIntoInputs(Tensor gate, Tensor up, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(gate);
        ArgumentNullException.ThrowIfNull(up);
        OpChecks.SameShape(gate, up, "gate", "up");
        if (gate.Device.IsGpu || up.Device.IsGpu)
        {
            throw new NotSupportedException("SwiGLU into its inputs: host tensors only (use SwiGlu on a device).");
        }

        if (ReferenceEquals(gate.Data, up.Data))
        {
            throw new ArgumentException("SwiGLU into its inputs: gate and up share one storage, so their gradients cannot both be written over it.", nameof(up));
        }

        bool record = Tape.ShouldRecord(gate, up);
        var y = record ? ScratchArrays.Rent(checked((int)gate.Count)) : GC.AllocateUninitializedArray<float>(checked((int)gate.Count));
        Kernels.Cpu.SwiGlu.Forward(gate.Data, up.Data, y, options);
        var output = new Tensor(y, gate.Shape);
        if (record)
        {
            Tape.Record(output, () =>
            {
                var (dgate, dup) = (gate.Data, up.Data);
                var g = output.Grad!;
                Kernels.Cpu.SwiGlu.Backward(g, dgate, dup, dgate, dup, options);
                Grad.AddOwned(gate, dgate);
                Grad.AddOwned(up, dup);
                ScratchArrays.Return(y);
                if (!ReferenceEquals(g, y))
                {
                    ScratchArrays.Return(g);
                }
            });
        }

        return output;
    }

    private static Tensor SwiGluOnDevice(Tensor gate, Tensor up) =>
        OpChecks.TwoInputsOnDevice(gate, up, nameof(up), SwiGluKernels.Forward, (accelerator, dy) =>
        {
            var device = gate.Device;
            var dgate = accelerator.Rent<float>(gate.Count);
            var dup = accelerator.Rent<float>(up.Count);
            SwiGluKernels.Backward(accelerator, dy, gate.View(device), up.View(device), dgate.View, dup.View);
            DeviceGrad.Give((gate, dgate), (up, dup));
        });
}
