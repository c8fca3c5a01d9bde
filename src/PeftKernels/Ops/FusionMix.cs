// AdapterFusion (docs/formats/bottleneck-adapters.md#fuse). With q [n, H] the projected query and
// k_i, v_i [n, H] each fused adapter's projected key and value:
//   s_i = (q · k_i) / T (row-wise, no √H),   p = softmax_i s,   y = Σ_i p_i · v_i
//   backward: dv_i = p_i·dy;  ds_i = p_i·(dy·v_i − Σ_j p_j·dy·v_j);  dq = Σ_i ds_i·k_i / T;  dk_i = ds_i·q / T
// and the regularization of the value matrix, R(V) = ‖I − V‖²_F, dR/dV = 2·(V − I).
// CPU: Kernels.Cpu.FusionMix (k and v stacked to [N, n, H]); no GPU path yet.
namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>Σ_i softmax_i((q·k_i)/T)·v_i, row by row, for q and every k_i, v_i of shape [n, H].</summary>
    /// <exception cref="NotSupportedException">An input lives on a GPU device.</exception>
    public static Tensor FusionMix(Tensor q, IReadOnlyList<Tensor> keys, IReadOnlyList<Tensor> values, float temperature = 1f)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        if (keys.Count == 0 || keys.Count != values.Count)
        {
            throw new ArgumentException($"fusion needs one key and one value per adapter; got {keys.Count} keys and {values.Count} values.", nameof(values));
        }

        HostOnly(q, "FusionMix");
        foreach (var t in keys.Concat(values))
        {
            OpChecks.SameShape(q, t, "query", "key/value");
            HostOnly(t, "FusionMix");
        }

        int n = q.Rows, h = q.Columns, count = keys.Count;
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
    /// <exception cref="NotSupportedException"><paramref name="v"/> lives on a GPU device.</exception>
    public static Tensor FusionRegularization(Tensor v)
    {
        ArgumentNullException.ThrowIfNull(v);
        if (v.Shape.Length != 2 || v.Shape[0] != v.Shape[1])
        {
            throw new ArgumentException($"the fusion value matrix must be square; it has shape [{string.Join(", ", v.Shape)}].", nameof(v));
        }

        HostOnly(v, "FusionRegularization");
        int d = v.Shape[0];
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
