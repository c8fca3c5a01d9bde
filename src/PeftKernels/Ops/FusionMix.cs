// AdapterFusion (docs/formats/bottleneck-adapters.md#fuse). With q [n, H] the projected query and
// k_i, v_i [n, H] each fused adapter's projected key and value:
//   s_i = (q · k_i) / T (row-wise, no √H),   p = softmax_i s,   y = Σ_i p_i · v_i
//   backward: dv_i = p_i·dy;  ds_i = p_i·(dy·v_i − Σ_j p_j·dy·v_j);  dq = Σ_i ds_i·k_i / T;  dk_i = ds_i·q / T
// and the regularization of the value matrix, R(V) = ‖I − V‖²_F, dR/dV = 2·(V − I).
// CPU: Kernels.Cpu.FusionMix (k and v stacked to [N, n, H]); GPU: FusionMixKernels, the keys and values copied into
// stacked temporaries with the probabilities p [n, N] (freed after the backward's wait, or the forward's when nothing
// records). The regularization's sum is a host value on either device (a [1] tensor on the host, as the loss is).
namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>Σ_i softmax_i((q·k_i)/T)·v_i, row by row, for q and every k_i, v_i of shape [n, H].</summary>
    public static Tensor FusionMix(Tensor q, IReadOnlyList<Tensor> keys, IReadOnlyList<Tensor> values, float temperature = 1f)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        if (keys.Count == 0 || keys.Count != values.Count)
        {
            throw new ArgumentException($"fusion needs one key and one value per adapter; got {keys.Count} keys and {values.Count} values.", nameof(values));
        }

        foreach (var t in keys.Concat(values))
        {
            OpChecks.SameShape(q, t, "query", "key/value");
        }

        int n = q.Rows, h = q.Columns, count = keys.Count;
        if (q.Device.IsGpu)
        {
            return FusionMixOnDevice(q, keys, values, temperature, n, h, count);
        }

        var k = Stack(keys);
        var v = Stack(values);
        var y = new float[checked(n * h)];
        var p = new float[checked(n * count)];
        Kernels.Cpu.FusionMix.Forward(q.Data, k, v, y, p, n, h, count, temperature);
        var output = new Tensor(y, q.Shape);
        if (Tape.IsRecording && (q.RequiresGrad || keys.Any(t => t.RequiresGrad) || values.Any(t => t.RequiresGrad)))
        {
            Tape.Record(output, () =>
            {
                var dq = new float[q.Count];
                var dk = new float[k.Length];
                var dv = new float[v.Length];
                Kernels.Cpu.FusionMix.Backward(output.Grad!, q.Data, k, v, p, dq, dk, dv, n, h, count, temperature);
                Grad.AddOwned(q, dq);
                for (int i = 0; i < count; i++)
                {
                    Grad.AddOwned(keys[i], dk.AsSpan(i * n * h, n * h).ToArray());
                    Grad.AddOwned(values[i], dv.AsSpan(i * n * h, n * h).ToArray());
                }
            });
        }

        return output;
    }

    /// <summary>‖I − V‖²_F for a square <paramref name="v"/> [d, d], as a one-element tensor.</summary>
    public static Tensor FusionRegularization(Tensor v)
    {
        ArgumentNullException.ThrowIfNull(v);
        if (v.Shape.Length != 2 || v.Shape[0] != v.Shape[1])
        {
            throw new ArgumentException($"the fusion value matrix must be square; it has shape [{string.Join(", ", v.Shape)}].", nameof(v));
        }

        int d = v.Shape[0];
        if (v.Device.IsGpu)
        {
            return FusionRegularizationOnDevice(v, d);
        }

        var data = v.Data;
        double sum = 0;
        for (int a = 0; a < d; a++)
        {
            for (int b = 0; b < d; b++)
            {
                double e = (a == b ? 1.0 : 0.0) - data[(a * d) + b];
                sum += e * e;
            }
        }

        var output = new Tensor([(float)sum], 1);
        if (Tape.ShouldRecord(v))
        {
            Tape.Record(output, () =>
            {
                float g = output.Grad![0];
                var dv = new float[data.Length];
                for (int a = 0; a < d; a++)
                {
                    for (int b = 0; b < d; b++)
                    {
                        dv[(a * d) + b] = 2f * g * (data[(a * d) + b] - (a == b ? 1f : 0f));
                    }
                }

                Grad.AddOwned(v, dv);
            });
        }

        return output;
    }

    private static Tensor FusionMixOnDevice(Tensor q, IReadOnlyList<Tensor> keys, IReadOnlyList<Tensor> values, float temperature, int n, int h, int count)
    {
        var device = q.Device;
        var accelerator = device.Accelerator;
        long size = (long)n * h;
        var k = accelerator.Rent<float>(count * size);
        var v = accelerator.Rent<float>(count * size);
        var p = accelerator.Rent<float>((long)n * count);
        for (int i = 0; i < count && size != 0; i++)
        {
            OpChecks.SameDevice(device, keys[i], "keys");
            OpChecks.SameDevice(device, values[i], "values");
            k.View.SubView(i * size, size).CopyFrom(keys[i].View(device));
            v.View.SubView(i * size, size).CopyFrom(values[i].View(device));
        }

        var output = OpChecks.DeviceTensor(device, q.Shape);
        FusionMixKernels.Forward(accelerator, q.View(device), k.View, v.View, output.View(device), p.View, n, h, count, temperature);
        if (!(Tape.IsRecording && (q.RequiresGrad || keys.Any(t => t.RequiresGrad) || values.Any(t => t.RequiresGrad))))
        {
            k.Dispose();
            v.Dispose();
            p.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var ds = accelerator.Rent<float>((long)n * count);
            var dq = accelerator.Rent<float>(size);
            var dk = accelerator.Rent<float>(count * size);
            var dv = accelerator.Rent<float>(count * size);
            FusionMixKernels.Backward(accelerator, output.DeviceGrad, q.View(device), k.View, v.View, p.View, ds.View, dq.View, dk.View, dv.View, n, h, count, temperature);
            var grads = new List<(Tensor, DeviceArray<float>?)> { (q, dq) };
            for (int i = 0; i < count; i++)
            {
                var dki = DeviceGrad.Buffer(device, keys[i]);
                var dvi = DeviceGrad.Buffer(device, values[i]);
                if (size != 0)
                {
                    dki?.View.CopyFrom(dk.View.SubView(i * size, size));
                    dvi?.View.CopyFrom(dv.View.SubView(i * size, size));
                }

                grads.Add((keys[i], dki));
                grads.Add((values[i], dvi));
            }

            k.Dispose();
            v.Dispose();
            p.Dispose();
            ds.Dispose();
            dk.Dispose();
            dv.Dispose();
            DeviceGrad.Give([.. grads]);
        });
        return output;
    }

    private static Tensor FusionRegularizationOnDevice(Tensor v, int d)
    {
        var device = v.Device;
        var accelerator = device.Accelerator;
        var sum = accelerator.Rent<float>(1);
        FusionMixKernels.Regularization(accelerator, v.View(device), sum.View, d);
        var output = new Tensor(DeviceSync.Download(sum.View), 1); // host value: the loss term, a host scalar as the cross-entropy's
        sum.Dispose();
        if (Tape.ShouldRecord(v))
        {
            Tape.Record(output, () =>
            {
                var dv = DeviceGrad.Buffer(device, v)!;
                FusionMixKernels.RegularizationBackward(accelerator, v.View(device), output.Grad![0], dv.View, d);
                DeviceGrad.Give(v, dv);
            });
        }

        return output;
    }

    private static float[] Stack(IReadOnlyList<Tensor> tensors)
    {
        int size = checked((int)tensors[0].Count);
        var stacked = GC.AllocateUninitializedArray<float>(checked(size * tensors.Count));
        for (int i = 0; i < tensors.Count; i++)
        {
            tensors[i].Data.CopyTo(stacked.AsSpan(i * size, size));
        }

        return stacked;
    }
}
