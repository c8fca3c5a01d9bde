// X-LoRA's ops (docs/formats/xlora.md), each with its CPU body and its backward:
//   ScaleRows    y[i, :] = s[i, k]·x[i, :]        x [n, d], s [n, c], one column k of s
//                dx[i, :] = s[i, k]·g[i, :];  ds[i, k] = Σ_j g[i, j]·x[i, j]
//                (the per-token expert scaling of an expert branch's input; the gradient reaches the classifier through ds)
//   XLoraGate    per row and group of e logits: p = softmax(z/T) (or z), keep the top k of p, then a softmax over the kept
//                entries (softmax-top-k) or p on the kept entries and 0 elsewhere. Backward (chain rule through the two
//                softmaxes; the top-k selection is piecewise constant): dq = o ⊙ (g − Σ_kept g·o) on kept (or g),
//                dp = dq ⊙ keep, dz = p ⊙ (dp − Σ dp·p)/T (or dp)
//   ReluDropout  y = max(x, 0) ⊙ m with m the seeded dropout multipliers (0 or 1/(1 − p)); dx = g ⊙ m ⊙ [x > 0]
//                (the classifier's hidden layers: PEFT's ReLU then Dropout)
// The double-precision specification is Kernels.Reference.XLoraReference. GPU: XLoraKernels. On a device
// the gate keeps p [rows, E] and the keep flags (ints) as temporaries for the backward, freed after its wait (or the
// forward's when nothing records); ScaleRows and ReluDropout keep nothing (the mask is recomputed from p and seed).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

/// <summary>The X-LoRA gate's settings (PEFT's enable_softmax, softmax_temperature, top_k_lora, enable_softmax_topk).</summary>
/// <param name="Experts">Entries per group (E).</param>
/// <param name="Temperature">Softmax temperature (> 0).</param>
/// <param name="Softmax">Softmax over each group first.</param>
/// <param name="TopK">Keep the k largest of each group; 0 keeps all.</param>
/// <param name="SoftmaxTopK">Replace the kept entries by a softmax over them.</param>
public sealed record XLoraGateOptions(int Experts, float Temperature = 1f, bool Softmax = true, int TopK = 0, bool SoftmaxTopK = false);

public static partial class Functional
{
    /// <summary>y[i, :] = s[i, column]·x[i, :] for x [n, d] and s [n, c] (X-LoRA's per-token expert scaling).</summary>
    public static Tensor ScaleRows(Tensor x, Tensor s, int column)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(s);
        int n = x.Rows, d = x.Columns, c = s.Columns;
        if (s.Rows != n || (uint)column >= (uint)c)
        {
            throw new ArgumentException($"ScaleRows: s [{string.Join(", ", s.Shape)}] needs {n} rows (one per row of x [{string.Join(", ", x.Shape)}]) and a column in [0, {c}); got column {column}.", nameof(s));
        }

        if (x.Device.IsGpu)
        {
            return ScaleRowsOnDevice(x, s, column, n, d, c);
        }

        var xd = x.Data;
        var sd = s.Data;
        var y = GC.AllocateUninitializedArray<float>(xd.Length);
        for (int i = 0; i < n; i++)
        {
            float scale = sd[(i * c) + column];
            System.Numerics.Tensors.TensorPrimitives.Multiply(xd.AsSpan(i * d, d), scale, y.AsSpan(i * d, d));
        }

        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, s))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                if (x.RequiresGrad)
                {
                    var dx = GC.AllocateUninitializedArray<float>(g.Length);
                    for (int i = 0; i < n; i++)
                    {
                        System.Numerics.Tensors.TensorPrimitives.Multiply(g.AsSpan(i * d, d), sd[(i * c) + column], dx.AsSpan(i * d, d));
                    }

                    Grad.AddOwned(x, dx);
                }

                if (s.RequiresGrad)
                {
                    var ds = new float[n * c];
                    for (int i = 0; i < n; i++)
                    {
                        ds[(i * c) + column] = System.Numerics.Tensors.TensorPrimitives.Dot(g.AsSpan(i * d, d), xd.AsSpan(i * d, d));
                    }

                    Grad.AddOwned(s, ds);
                }
            });
        }

        return output;
    }

    /// <summary>The X-LoRA gate over logits [n, groups·E]: softmax with temperature, top-k, softmax over the top k (per group).</summary>
    public static Tensor XLoraGate(Tensor logits, XLoraGateOptions options)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(options);
        int e = options.Experts, width = logits.Columns;
        if (e <= 0 || width % e != 0 || !(options.Temperature > 0) || options.TopK < 0)
        {
            throw new ArgumentException($"XLoraGate: {width} logit columns, {e} experts, temperature {options.Temperature}, top-k {options.TopK}: "
                + "the columns must split into groups of E > 0, the temperature must be > 0 and top-k >= 0.", nameof(options));
        }

        int rows = logits.Rows * (width / e), k = options.TopK == 0 ? e : Math.Min(options.TopK, e);
        if (logits.Device.IsGpu)
        {
            return XLoraGateOnDevice(logits, options, rows, k);
        }

        var z = logits.Data;
        var p = new float[z.Length];
        var y = new float[z.Length];
        var keep = new bool[z.Length];
        var order = new int[e];
        for (int row = 0; row < rows; row++)
        {
            int at = row * e;
            var pr = p.AsSpan(at, e);
            if (options.Softmax)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(z.AsSpan(at, e), 1f / options.Temperature, pr);
                System.Numerics.Tensors.TensorPrimitives.SoftMax(pr, pr);
            }
            else
            {
                z.AsSpan(at, e).CopyTo(pr);
            }

            for (int j = 0; j < e; j++)
            {
                order[j] = j;
            }

            // Stable: equal values keep the lower index first.
            var pa = p;
            foreach (int j in order.OrderByDescending(j => pa[at + j]).ThenBy(j => j).Take(k))
            {
                keep[at + j] = true;
            }

            GateRow(pr, keep.AsSpan(at, e), y.AsSpan(at, e), options.SoftmaxTopK);
        }

        var output = new Tensor(y, logits.Shape);
        if (Tape.ShouldRecord(logits))
        {
            Tape.Record(output, () => Grad.AddOwned(logits, GateBackward(output.Grad!, y, p, keep, rows, e, options)));
        }

        return output;
    }

    /// <summary>y = max(x, 0) ⊙ m, m = 0 or 1/(1 − p) per element from the seeded dropout hash (none when p is 0).</summary>
    public static Tensor ReluDropout(Tensor x, float p, ulong seed, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (!(p >= 0f && p < 1f))
        {
            throw new ArgumentOutOfRangeException(nameof(p), $"ReluDropout: the dropout probability must be in [0, 1); got {p}.");
        }

        if (x.Device.IsGpu)
        {
            return ReluDropoutOnDevice(x, p, seed);
        }

        var xd = x.Data;
        float[]? m = null;
        if (p > 0)
        {
            var ones = new float[xd.Length];
            Array.Fill(ones, 1f);
            m = new float[xd.Length];
            Dropout.Apply(ones, m, p, seed, options);
        }

        var y = new float[xd.Length];
        for (int i = 0; i < y.Length; i++)
        {
            y[i] = xd[i] > 0 ? xd[i] * (m?[i] ?? 1f) : 0f;
        }

        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                var dx = new float[g.Length];
                for (int i = 0; i < dx.Length; i++)
                {
                    dx[i] = xd[i] > 0 ? g[i] * (m?[i] ?? 1f) : 0f;
                }

                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    private static void GateRow(ReadOnlySpan<float> p, ReadOnlySpan<bool> keep, Span<float> y, bool softmaxTopK)
    {
        if (!softmaxTopK)
        {
            for (int j = 0; j < p.Length; j++)
            {
                y[j] = keep[j] ? p[j] : 0f;
            }

            return;
        }

        float max = float.NegativeInfinity, sum = 0;
        for (int j = 0; j < p.Length; j++)
        {
            max = keep[j] ? MathF.Max(max, p[j]) : max;
        }

        for (int j = 0; j < p.Length; j++)
        {
            y[j] = keep[j] ? MathF.Exp(p[j] - max) : 0f;
            sum += y[j];
        }

        for (int j = 0; j < p.Length; j++)
        {
            y[j] /= sum;
        }
    }

    private static float[] GateBackward(float[] g, float[] y, float[] p, bool[] keep, int rows, int e, XLoraGateOptions options)
    {
        var dz = new float[g.Length];
        var dp = new float[e];
        for (int row = 0; row < rows; row++)
        {
            int at = row * e;
            double dot = 0;
            for (int j = 0; j < e; j++)
            {
                dot += keep[at + j] ? (double)g[at + j] * y[at + j] : 0;
            }

            for (int j = 0; j < e; j++)
            {
                float dq = options.SoftmaxTopK ? (float)(y[at + j] * (g[at + j] - dot)) : g[at + j];
                dp[j] = keep[at + j] ? dq : 0f;
            }

            if (!options.Softmax)
            {
                dp.CopyTo(dz, at);
                continue;
            }

            double inner = 0;
            for (int j = 0; j < e; j++)
            {
                inner += (double)dp[j] * p[at + j];
            }

            for (int j = 0; j < e; j++)
            {
                dz[at + j] = (float)(p[at + j] * (dp[j] - inner) / options.Temperature);
            }
        }

        return dz;
    }

    private static Tensor ScaleRowsOnDevice(Tensor x, Tensor s, int column, int n, int d, int c)
    {
        var device = x.Device;
        OpChecks.SameDevice(device, s, nameof(s));
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, x.Shape);
        XLoraKernels.ScaleRows(accelerator, x.View(device), s.View(device), output.View(device), n, d, c, column);
        if (Tape.ShouldRecord(x, s))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x);
                var ds = DeviceGrad.Buffer(device, s);
                XLoraKernels.ScaleRowsBackward(accelerator, output.DeviceGrad, x.View(device), s.View(device), dx?.View ?? default, ds?.View ?? default, n, d, c, column);
                DeviceGrad.Give((x, dx), (s, ds));
            });
        }

        return output;
    }

    private static Tensor XLoraGateOnDevice(Tensor logits, XLoraGateOptions options, int rows, int k)
    {
        var device = logits.Device;
        var accelerator = device.Accelerator;
        int e = options.Experts;
        var p = accelerator.Rent<float>(logits.Count);
        var keep = accelerator.Rent<int>(logits.Count);
        var output = OpChecks.DeviceTensor(device, logits.Shape);
        XLoraKernels.Gate(accelerator, logits.View(device), p.View, keep.View, output.View(device), rows, e, options.Temperature, options.Softmax, k, options.SoftmaxTopK);
        if (!Tape.ShouldRecord(logits))
        {
            p.Dispose();
            keep.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dz = DeviceGrad.Buffer(device, logits)!;
            XLoraKernels.GateBackward(accelerator, output.DeviceGrad, output.View(device), p.View, keep.View, dz.View, rows, e, options.Temperature,
                options.Softmax, options.SoftmaxTopK);
            p.Dispose();
            keep.Dispose();
            DeviceGrad.Give(logits, dz);
        });
        return output;
    }

    private static Tensor ReluDropoutOnDevice(Tensor x, float p, ulong seed)
    {
        var input = x.View(x.Device);
        return OpChecks.OneInputOnDevice(x,
            (acc, xv, y) => XLoraKernels.ReluDropout(acc, xv, y, p, seed),
            (acc, dy, _, dx) => XLoraKernels.ReluDropoutBackward(acc, dy, input, dx, p, seed));
    }
}
