// One LoRA branch added to a Linear output outside the fused kernel: a second (third, …)
// active adapter, or the rows of one adapter in a per-row batch. With R the branch's rows
// (all rows, or a gathered subset) and m = |R|:
//   u = drop(x[R, :])                   [m, in]   (materialised only when p > 0)
//   h = u · Aᵀ                          [m, r]
//   y[R, :] += s · (h · Bᵀ + bias_B)    [m, out]
// Backward, g_R = dL/dy[R, :] (chain rule through the two GEMMs and the mask):
//   dB      = s · g_Rᵀ · h              [out, r]
//   dbias_B = s · Σ_rows g_R            [out]
//   dh      = s · g_R · B               [m, r]
//   dA      = dhᵀ · u                   [r, in]   (skipped when A is frozen: LoRA-FA)
//   dx[R,:] += drop'(dh · A)            (the same mask and 1/(1 − p) scale as forward)
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

internal sealed class LoraBranch
{
    private readonly LoraAdapter lora;
    private readonly int[]? rows;
    private readonly float[] u;
    private readonly float[] h;
    private readonly float dropout;
    private readonly ulong seed;

    private LoraBranch(LoraAdapter lora, int[]? rows, float[] u, float[] h, float dropout, ulong seed)
    {
        this.lora = lora;
        this.rows = rows;
        this.u = u;
        this.h = h;
        this.dropout = dropout;
        this.seed = seed;
    }

    public bool NeedsGrad => lora.A.RequiresGrad || lora.B.RequiresGrad || lora.Bias?.RequiresGrad == true;

    /// <summary>Adds the branch to y [n, out] in place and returns what backward needs.</summary>
    public static LoraBranch Run(float[] x, float[] y, LoraAdapter lora, int[]? rows, float dropout, ulong seed, int inF, int outF, KernelOptions k)
    {
        int m = rows?.Length ?? (x.Length / inF), r = lora.Rank;
        float s = lora.Scale;
        var xr = rows == null ? x : Gather(x, rows, inF);
        var u = xr;
        if (dropout > 0)
        {
            u = ReferenceEquals(xr, x) ? GC.AllocateUninitializedArray<float>(xr.Length) : xr;
            Dropout.Apply(xr, u, dropout, seed, k);
        }

        var h = GC.AllocateUninitializedArray<float>(m * r);
        Gemm.Multiply(false, true, m, r, inF, 1f, u, lora.A.Data, 0f, h, k);
        if (rows == null)
        {
            Gemm.Multiply(false, true, m, outF, r, s, h, lora.B.Data, 1f, y, k);
            AddScaledBias(y, m, outF, lora.Bias, s, null);
        }
        else
        {
            var yr = GC.AllocateUninitializedArray<float>(m * outF);
            Gemm.Multiply(false, true, m, outF, r, s, h, lora.B.Data, 0f, yr, k);
            for (int i = 0; i < m; i++)
            {
                var target = y.AsSpan(rows[i] * outF, outF);
                System.Numerics.Tensors.TensorPrimitives.Add(target, yr.AsSpan(i * outF, outF), target);
            }

            AddScaledBias(y, m, outF, lora.Bias, s, rows);
        }

        return new LoraBranch(lora, rows, u, h, dropout, seed);
    }

    /// <summary>Accumulates the branch's gradients into A, B, bias_B and x given g = dL/dy [n, out].</summary>
    public void Backward(float[] g, Tensor x, int inF, int outF, KernelOptions k)
    {
        int n = x.Rows, m = rows?.Length ?? n, r = lora.Rank;
        float s = lora.Scale;
        var gr = rows == null ? g : Gather(g, rows, outF);
        if (lora.B.RequiresGrad)
        {
            var db = GC.AllocateUninitializedArray<float>(outF * r);
            Gemm.Multiply(true, false, outF, r, m, s, gr, h, 0f, db, k);
            Grad.AddOwned(lora.B, db);
        }

        if (lora.Bias?.RequiresGrad == true)
        {
            Grad.AddOwned(lora.Bias, ScaledColumnSums(gr, m, outF, s));
        }

        if (!lora.A.RequiresGrad && !x.RequiresGrad)
        {
            return;
        }

        var dh = GC.AllocateUninitializedArray<float>(m * r);
        Gemm.Multiply(false, false, m, r, outF, s, gr, lora.B.Data, 0f, dh, k);
        if (lora.A.RequiresGrad)
        {
            var da = GC.AllocateUninitializedArray<float>(r * inF);
            Gemm.Multiply(true, false, r, inF, m, 1f, dh, u, 0f, da, k);
            Grad.AddOwned(lora.A, da);
        }

        if (x.RequiresGrad)
        {
            var dxr = GC.AllocateUninitializedArray<float>(m * inF);
            Gemm.Multiply(false, false, m, inF, r, 1f, dh, lora.A.Data, 0f, dxr, k);
            if (dropout > 0)
            {
                Dropout.Apply(dxr, dxr, dropout, seed, k);
            }

            if (rows == null)
            {
                Grad.AddOwned(x, dxr);
            }
            else
            {
                var dx = new float[n * inF];
                for (int i = 0; i < m; i++)
                {
                    dxr.AsSpan(i * inF, inF).CopyTo(dx.AsSpan(rows[i] * inF, inF));
                }

                Grad.AddOwned(x, dx);
            }
        }
    }

    /// <summary>s · Σ_rows g for g [rows, cols].</summary>
    public static float[] ScaledColumnSums(ReadOnlySpan<float> g, int rowCount, int cols, float s)
    {
        var sums = new float[cols];
        for (int i = 0; i < rowCount; i++)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(sums, g.Slice(i * cols, cols), sums);
        }

        System.Numerics.Tensors.TensorPrimitives.Multiply(sums, s, sums);
        return sums;
    }

    private static void AddScaledBias(float[] y, int m, int outF, Parameter? bias, float s, int[]? rows)
    {
        if (bias == null)
        {
            return;
        }

        var scaled = new float[outF];
        System.Numerics.Tensors.TensorPrimitives.Multiply(bias.Data, s, scaled);
        for (int i = 0; i < m; i++)
        {
            var target = y.AsSpan((rows?[i] ?? i) * outF, outF);
            System.Numerics.Tensors.TensorPrimitives.Add(target, scaled, target);
        }
    }

    private static float[] Gather(float[] source, int[] rows, int cols)
    {
        var result = GC.AllocateUninitializedArray<float>(rows.Length * cols);
        for (int i = 0; i < rows.Length; i++)
        {
            source.AsSpan(rows[i] * cols, cols).CopyTo(result.AsSpan(i * cols, cols));
        }

        return result;
    }
}
