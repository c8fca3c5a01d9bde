// One LoRA branch (docs/formats/methods.md#lora-branch) added to a layer output outside the fused LoraMatmul: a second (third, …)
// active adapter, or the rows of one adapter in a per-row batch. With R the branch's rows (all
// rows, or a subset; "__base__" rows belong to none) and m = |R|:
//   u = drop(x[R, :])                   [m, in]   (materialised only when p > 0)
//   h = u · Aᵀ                          [m, r]
//   y'[R, :] = y[R, :] + s · (h · Bᵀ + bias_B)    [m, out]   (other rows unchanged)
// Backward, g = dL/dy' (chain rule through the two GEMMs and the mask):
//   dy      = g                                    (passed on unchanged)
//   dB      = s · g_Rᵀ · h              [out, r]
//   dbias_B = s · Σ_rows g_R            [out]
//   dh      = s · g_R · B               [m, r]
//   dA      = dhᵀ · u                   [r, in]   (skipped when A is frozen: LoRA-FA)
//   dx[R,:] += drop'(dh · A)            (the same mask and 1/(1 − p) scale as forward)
// y is consumed: on the host its storage receives the sum (the output shares it); on a device the
// sum is added in place in inference and into a copy while recording. CPU: Kernels.Cpu.LoraBranch;
// GPU: LoraBranchKernels (same mask for the gathered rows). Trainable lora_B biases are refused on a device.
using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// y[R] + s·drop(x[R])·Aᵀ·Bᵀ (+ s·bias_B) for the rows R (all rows when <paramref name="rows"/> is null) of y [n, out] and
    /// x [n, in]; <paramref name="y"/> is consumed (its storage may receive the sum) and must not be read afterwards.
    /// </summary>
    public static Tensor LoraBranch(Tensor y, Tensor x, LoraFactors lora, int[]? rows, in LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(lora);
        int n = x.Rows, inF = x.Columns, outF = y.Columns;
        lora.Check(inF, outF, "LoRA branch");
        if (y.Rows != n)
        {
            throw new ArgumentException($"LoRA branch, adapter '{lora.Name}': y [{string.Join(", ", y.Shape)}] and x [{string.Join(", ", x.Shape)}] have different row counts.", nameof(y));
        }

        if (rows != null && rows.Any(i => (uint)i >= (uint)n))
        {
            throw new ArgumentOutOfRangeException(nameof(rows), $"LoRA branch, adapter '{lora.Name}': a row index is outside [0, {n}).");
        }

        if (x.Device.IsGpu)
        {
            return LoraBranchOnDevice(y, x, lora, rows, options);
        }

        int m = rows?.Length ?? n, r = lora.Rank;
        var yd = y.Data;
        var h = GC.AllocateUninitializedArray<float>(m * r);
        Kernels.Cpu.LoraBranch.ForwardAccumulate(x.Data, rows, lora.A.Data, lora.B.Data, KernelBias(null, lora), lora.Scale,
            yd, h, n, inF, outF, r, options);
        bool record = Tape.IsRecording && (y.RequiresGrad || x.RequiresGrad || lora.RequiresGrad);
        if (!record)
        {
            return y;
        }

        var output = new Tensor(yd, y.Shape);
        var opts = options;
        Tape.Record(output, () => BranchBackward(output.Grad!, y, x, lora, rows, h, opts));
        return output;
    }

    private static void BranchBackward(float[] g, Tensor y, Tensor x, LoraFactors lora, int[]? rows, float[] h, in LoraOptions options)
    {
        int n = x.Rows, inF = x.Columns, outF = y.Columns, r = lora.Rank;
        var (a, b) = (lora.A, lora.B);
        if (a.RequiresGrad || b.RequiresGrad || x.RequiresGrad)
        {
            float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(n * inF) : [];
            float[] da = a.RequiresGrad ? GC.AllocateUninitializedArray<float>(r * inF) : [];
            float[] db = b.RequiresGrad ? GC.AllocateUninitializedArray<float>(outF * r) : [];
            Kernels.Cpu.LoraBranch.Backward(g, x.Data, rows, h, a.Data, b.Data, lora.Scale, dx, da, db, n, inF, outF, r, options);
            Grad.AddOwned(x, dx);
            Grad.AddOwned(a, da);
            Grad.AddOwned(b, db);
        }

        if (lora.Bias?.RequiresGrad == true)
        {
            Grad.AddColumnSums(lora.Bias, rows == null ? g : GatherRows(g, rows, outF), rows?.Length ?? n, outF, lora.Scale);
        }

        // dy = g: y's storage is the output's, and nothing reads g after this node, so it is handed over without a copy.
        Grad.AddOwned(y, g);
    }

    private static float[] GatherRows(float[] source, int[] rows, int cols)
    {
        var result = GC.AllocateUninitializedArray<float>(rows.Length * cols);
        for (int i = 0; i < rows.Length; i++)
        {
            source.AsSpan(rows[i] * cols, cols).CopyTo(result.AsSpan(i * cols, cols));
        }

        return result;
    }

    private static Tensor LoraBranchOnDevice(Tensor y, Tensor x, LoraFactors lora, int[]? rows, LoraOptions options)
    {
        var device = x.Device;
        OpChecks.SameDevice(device, y, nameof(y));
        var accelerator = device.Accelerator;
        int n = x.Rows, inF = x.Columns, outF = y.Columns, r = lora.Rank;
        OpChecks.DeviceInferenceOnly(Tape.IsRecording && lora.Bias?.RequiresGrad == true,
            $"Linear [{outF}, {inF}] adapter '{lora.Name}' (trainable lora_B bias of an extra adapter)");
        bool record = Tape.IsRecording && (y.RequiresGrad || x.RequiresGrad || lora.A.RequiresGrad || lora.B.RequiresGrad);
        var output = y;
        if (record)
        {
            output = OpChecks.DeviceTensor(device, y.Shape);
            output.View(device).CopyFrom(y.View(device));
        }

        var h = accelerator.Rent<float>((long)(rows?.Length ?? n) * r);
        using (var bias = lora.Bias == null ? null : accelerator.Upload(KernelBias(null, lora)))
        {
            LoraBranchKernels.ForwardAccumulate(accelerator, x.View(device), rows, lora.A.View(device), lora.B.View(device), bias?.View ?? default, lora.Scale,
                output.View(device), h.View, n, inF, outF, r, options);
        }

        // y may be an uploaded tensor with a host mirror: accumulating into it on the device makes the mirror stale.
        output.MarkMirrorChanged();

        if (!record)
        {
            h.Dispose();
            return y;
        }

        var (a, b) = (lora.A, lora.B);
        Tape.Record(output, () =>
        {
            var g = output.DeviceGrad;
            DeviceGrad.GiveCopy(y, accelerator, g);
            var dx = DeviceGrad.Buffer(device, x);
            var da = DeviceGrad.Buffer(device, a);
            var db = DeviceGrad.Buffer(device, b);
            LoraBranchKernels.Backward(accelerator, g, x.View(device), rows, h.View, a.View(device), b.View(device), lora.Scale,
                dx?.View ?? default, da?.View ?? default, db?.View ?? default, n, inF, outF, r, options);
            h.Dispose();
            DeviceGrad.Give((x, dx), (a, da), (b, db));
        });
        return output;
    }
}
