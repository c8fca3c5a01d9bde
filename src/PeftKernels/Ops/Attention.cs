// Causal grouped-query attention, flash style. q [batch·tq, heads·hd], k, v [batch·tk, kvHeads·hd];
// query i of a sequence is position tk − tq + i, head h reads kv head h / (heads / kvHeads):
//   S = q·kᵀ · 1/√hd (causal mask);  lse = logsumexp_row(S);  P = exp(S − lse);  o = P·v
// Backward recomputes P from q, k and lse (only lse [batch·heads·tq] is saved, never P):
//   dv = Pᵀ·do;  dP = do·vᵀ;  D = rowsum(do ⊙ o);  dS = P ⊙ (dP − D);  dq = dS·k/√hd;  dk = dSᵀ·q/√hd
// CPU: Kernels.Cpu.Attention (+ AttentionBackward); GPU: AttentionKernels (+ AttentionBackwardKernels).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// Causal grouped-query attention of q [batch·queryLength, heads·headDim] over k, v
    /// [batch·keyLength, kvHeads·headDim]; the queries are the last queryLength positions.
    /// Backward keeps only the per-row log-sum-exp, never the probability matrix.
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, int batch, int heads, int kvHeads, int headDim, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        OpChecks.SameShape(k, v, "k", "v");
        long queryRows = q.Count / ((long)heads * headDim), keyRows = k.Count / ((long)kvHeads * headDim);
        if (batch <= 0 || queryRows % batch != 0 || keyRows % batch != 0)
        {
            throw new ArgumentException($"attention: q [{string.Join(", ", q.Shape)}] and k [{string.Join(", ", k.Shape)}] do not split into batch {batch}.", nameof(batch));
        }

        int tq = (int)(queryRows / batch), tk = (int)(keyRows / batch);
        if (q.Device.IsGpu)
        {
            return AttentionOnDevice(q, k, v, batch, tq, tk, heads, kvHeads, headDim);
        }

        float scale = 1f / MathF.Sqrt(headDim);
        var o = GC.AllocateUninitializedArray<float>(checked((int)q.Count));
        var lse = GC.AllocateUninitializedArray<float>(batch * heads * tq);
        Kernels.Cpu.Attention.Forward(q.Data, k.Data, v.Data, o, lse, batch, tq, tk, heads, kvHeads, headDim, scale, options);
        var output = new Tensor(o, q.Shape);
        if (Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad))
        {
            Tape.Record(output, () =>
            {
                var dq = GC.AllocateUninitializedArray<float>(o.Length);
                var dk = GC.AllocateUninitializedArray<float>(checked((int)k.Count));
                var dv = GC.AllocateUninitializedArray<float>(checked((int)v.Count));
                Kernels.Cpu.Attention.Backward(output.Grad!, q.Data, k.Data, v.Data, o, lse, dq, dk, dv, batch, tq, tk, heads, kvHeads, headDim, scale, options);
                Grad.AddOwned(q, dq);
                Grad.AddOwned(k, dk);
                Grad.AddOwned(v, dv);
            });
        }

        return output;
    }

    private static Tensor AttentionOnDevice(Tensor q, Tensor k, Tensor v, int batch, int tq, int tk, int heads, int kvHeads, int headDim)
    {
        var device = q.Device;
        OpChecks.SameDevice(device, k, nameof(k));
        OpChecks.SameDevice(device, v, nameof(v));
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, q.Shape);
        float scale = 1f / MathF.Sqrt(headDim);
        var lse = accelerator.Rent<float>((long)batch * heads * tq);
        AttentionKernels.Forward(accelerator, q.View(device), k.View(device), v.View(device), output.View(device), lse.View,
            batch, tq, tk, heads, kvHeads, headDim, scale);
        if (!(Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad)))
        {
            lse.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dq = accelerator.Rent<float>(q.Count);
            var dk = accelerator.Rent<float>(k.Count);
            var dv = accelerator.Rent<float>(v.Count);
            AttentionKernels.Backward(accelerator, output.DeviceGrad, q.View(device), k.View(device), v.View(device), output.View(device), lse.View,
                dq.View, dk.View, dv.View, batch, tq, tk, heads, kvHeads, headDim, scale);
            lse.Dispose();
            DeviceGrad.Give((q, dq), (k, dk), (v, dv));
        });
        return output;
    }
}
