// The element-wise, normalisation, attention and loss kernels, CUDA vs CPU (see KernelChecks.cs).
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.GpuRunner;

internal static partial class KernelChecks
{
    private static void Ia3(Accelerator acc, Report report)
    {
        var (n, dim) = (512, 1024);
        var x = Data.Random(n * dim, 1);
        var l = Data.Random(dim, 2);
        var dy = Data.Random(n * dim, 3);
        var y = new float[n * dim];
        var dx = new float[n * dim];
        var dl = new float[dim];
        var dlSum = new double[dim];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < dim; j++)
            {
                int at = (i * dim) + j;
                y[at] = x[at] * l[j];
                dx[at] = dy[at] * l[j];
                dlSum[j] += (double)dy[at] * x[at];
            }
        }

        for (int j = 0; j < dim; j++)
        {
            dl[j] = (float)dlSum[j];
        }

        using var gx = acc.Allocate1D(x);
        using var gl = acc.Allocate1D(l);
        using var gdy = acc.Allocate1D(dy);
        using var gy = acc.Allocate1D<float>(n * dim);
        using var gdx = acc.Allocate1D<float>(n * dim);
        using var gdl = acc.Allocate1D<float>(dim);
        Ia3Kernels.ScaleColumns(acc, gx.View, gl.View, gy.View, n, dim);
        Ia3Kernels.ScaleColumnsBackward(acc, gdy.View, gx.View, gl.View, gdx.View, gdl.View, n, dim);
        Compare(report, "ia3 forward y", $"{n}x{dim}", Data.Down(acc, gy.View), y, 0, 0, "(bit-exact)");
        Compare(report, "ia3 backward dx", $"{n}x{dim}", Data.Down(acc, gdx.View), dx, 0, 0, "(bit-exact)");
        Compare(report, "ia3 backward dl (vs double)", $"{n}x{dim}", Data.Down(acc, gdl.View), dl, DotAtol(n), 1e-5);
    }

    private static void AdamWCheck(Accelerator acc, Report report)
    {
        const int count = 1 << 20;
        var p = Data.Random(count, 1);
        var m = new float[count];
        var v = new float[count];
        using var gp = acc.Allocate1D(p);
        using var gm = acc.Allocate1D(m);
        using var gv = acc.Allocate1D(v);
        for (int step = 1; step <= 3; step++)
        {
            var g = Data.Random(count, 10 + step, 0.1f);
            using var gg = acc.Allocate1D(g);
            AdamWKernels.Step(acc, gp.View, gg.View, gm.View, gv.View, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
            AdamW.Step(p, g, m, v, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        }

        Compare(report, "adamw param (3 steps)", $"{count}", Data.Down(acc, gp.View), p, 0, 0, "(bit-exact: mul.rn/add.rn/div.rn/sqrt.rn)");
        Compare(report, "adamw exp_avg_sq", $"{count}", Data.Down(acc, gv.View), v, 0, 0, "(bit-exact)");
    }

    private static void RmsNormCheck(Accelerator acc, Report report)
    {
        var (n, dim) = (256, 2048);
        var x = Data.Random(n * dim, 1);
        var w = Data.Random(dim, 2);
        var dy = Data.Random(n * dim, 3);
        float[] y = new float[n * dim], rstd = new float[n], dx = new float[n * dim], dw = new float[dim];
        RmsNorm.Forward(x, w, 1e-5f, y, rstd, n, dim);
        RmsNorm.Backward(dy, x, w, rstd, dx, dw, n, dim);
        using var gx = acc.Allocate1D(x);
        using var gw = acc.Allocate1D(w);
        using var gdy = acc.Allocate1D(dy);
        using var gy = acc.Allocate1D<float>(n * dim);
        using var gr = acc.Allocate1D<float>(n);
        using var gdx = acc.Allocate1D<float>(n * dim);
        using var gdw = acc.Allocate1D<float>(dim);
        RmsNormKernels.Forward(acc, gx.View, gw.View, 1e-5f, gy.View, gr.View, n, dim);
        RmsNormKernels.Backward(acc, gdy.View, gx.View, gw.View, gr.View, gdx.View, gdw.View, n, dim);
        Compare(report, "rmsnorm rstd", $"{n}x{dim}", Data.Down(acc, gr.View), rstd, 0, 1e-5);
        Compare(report, "rmsnorm y", $"{n}x{dim}", Data.Down(acc, gy.View), y, 1e-5, 1e-5);
        Compare(report, "rmsnorm dx", $"{n}x{dim}", Data.Down(acc, gdx.View), dx, DotAtol(dim, 8), 1e-4);
        Compare(report, "rmsnorm dweight", $"{n}x{dim}", Data.Down(acc, gdw.View), dw, DotAtol(n, 2), 1e-4);
    }

    private static void RopeCheck(Accelerator acc, Report report)
    {
        var (n, heads, headDim) = (512, 16, 64);
        var x = Data.Random(n * heads * headDim, 1);
        int[] positions = [.. Enumerable.Range(0, n).Select(t => (t * 7) % 4096)];
        var inv = Rope.InverseFrequencies(headDim, 500000);
        var y = new float[x.Length];
        var dx = new float[x.Length];
        Rope.Forward(x, positions, inv, y, n, heads, headDim);
        Rope.Backward(x, positions, inv, dx, n, heads, headDim);
        using var gx = acc.Allocate1D(x);
        using var gpos = acc.Allocate1D(positions);
        using var ginv = acc.Allocate1D(inv);
        using var gy = acc.Allocate1D<float>(x.Length);
        RopeKernels.Forward(acc, gx.View, gpos.View, ginv.View, gy.View, n, heads, headDim);
        Compare(report, "rope forward", $"n{n} h{heads} d{headDim}", Data.Down(acc, gy.View), y, 1e-6, 1e-5, "(cos/sin via libdevice in double)");
        RopeKernels.Backward(acc, gx.View, gpos.View, ginv.View, gy.View, n, heads, headDim);
        Compare(report, "rope backward", $"n{n} h{heads} d{headDim}", Data.Down(acc, gy.View), dx, 1e-6, 1e-5);
    }

    private static void SwiGluCheck(Accelerator acc, Report report)
    {
        const int count = 1 << 20;
        var gate = Data.Random(count, 1, 10f);
        var up = Data.Random(count, 2);
        var dy = Data.Random(count, 3);
        float[] y = new float[count], dgate = new float[count], dup = new float[count];
        SwiGlu.Forward(gate, up, y);
        SwiGlu.Backward(dy, gate, up, dgate, dup);
        using var gg = acc.Allocate1D(gate);
        using var gu = acc.Allocate1D(up);
        using var gdy = acc.Allocate1D(dy);
        using var gy = acc.Allocate1D<float>(count);
        using var gdg = acc.Allocate1D<float>(count);
        using var gdu = acc.Allocate1D<float>(count);
        SwiGluKernels.Forward(acc, gg.View, gu.View, gy.View);
        SwiGluKernels.Backward(acc, gdy.View, gg.View, gu.View, gdg.View, gdu.View);
        Compare(report, "swiglu y", $"{count}", Data.Down(acc, gy.View), y, 1e-6, 1e-5, "(device expf)");
        Compare(report, "swiglu dgate", $"{count}", Data.Down(acc, gdg.View), dgate, 1e-6, 1e-4);
        Compare(report, "swiglu dup", $"{count}", Data.Down(acc, gdu.View), dup, 1e-6, 1e-5);
    }

    private static void AttentionCheck(Accelerator acc, Report report)
    {
        foreach (var (batch, tq, tk, heads, kvHeads, d) in new[] { (2, 256, 256, 8, 2, 64), (1, 7, 300, 4, 4, 128) })
        {
            float scale = 1f / MathF.Sqrt(d);
            var q = Data.Random(batch * tq * heads * d, 1);
            var k = Data.Random(batch * tk * kvHeads * d, 2);
            var v = Data.Random(batch * tk * kvHeads * d, 3);
            var dO = Data.Random(q.Length, 4);
            float[] o = new float[q.Length], lse = new float[batch * heads * tq], dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
            Attention.Forward(q, k, v, o, lse, batch, tq, tk, heads, kvHeads, d, scale);
            Attention.Backward(dO, q, k, v, o, lse, dq, dk, dv, batch, tq, tk, heads, kvHeads, d, scale);
            using var gq = acc.Allocate1D(q);
            using var gk = acc.Allocate1D(k);
            using var gv = acc.Allocate1D(v);
            using var gdo = acc.Allocate1D(dO);
            using var go = acc.Allocate1D<float>(q.Length);
            using var glse = acc.Allocate1D<float>(lse.Length);
            using var gdq = acc.Allocate1D<float>(q.Length);
            using var gdk = acc.Allocate1D<float>(k.Length);
            using var gdv = acc.Allocate1D<float>(v.Length);
            AttentionKernels.Forward(acc, gq.View, gk.View, gv.View, go.View, glse.View, batch, tq, tk, heads, kvHeads, d, scale);
            AttentionKernels.Backward(acc, gdo.View, gq.View, gk.View, gv.View, go.View, glse.View, gdq.View, gdk.View, gdv.View, batch, tq, tk, heads, kvHeads, d, scale);
            string shape = $"B{batch} Tq{tq} Tk{tk} H{heads} Hkv{kvHeads} d{d}";
            Compare(report, "attention o", shape, Data.Down(acc, go.View), o, 2e-5, 1e-4);
            Compare(report, "attention lse", shape, Data.Down(acc, glse.View), lse, 2e-5, 1e-5);
            Compare(report, "attention dq", shape, Data.Down(acc, gdq.View), dq, 4e-6 * Math.Sqrt(tk) * d, 1e-3);
            Compare(report, "attention dk", shape, Data.Down(acc, gdk.View), dk, 4e-6 * Math.Sqrt(tq * heads / kvHeads) * d, 1e-3);
            Compare(report, "attention dv", shape, Data.Down(acc, gdv.View), dv, 4e-6 * Math.Sqrt(tq * heads / kvHeads) * d, 1e-3);
        }
    }

    private static void CrossEntropyCheck(Accelerator acc, Report report)
    {
        var (n, vocab) = (128, 32000);
        var logits = Data.Random(n * vocab, 1, 8f);
        int[] labels = [.. Enumerable.Range(0, n).Select(i => i % 5 == 4 ? CrossEntropy.IgnoreIndex : (i * 7919) % vocab)];
        var lse = new float[n];
        double loss = CrossEntropy.Forward(logits, labels, lse, n, vocab);
        using var gz = acc.Allocate1D(logits);
        using var gl = acc.Allocate1D(labels);
        using var glse = acc.Allocate1D<float>(n);
        double gpuLoss = CrossEntropyKernels.Forward(acc, gz.View, gl.View, glse.View, n, vocab);
        Compare(report, "cross-entropy lse", $"n{n} vocab{vocab}", Data.Down(acc, glse.View), lse, 1e-5, 1e-5);
        Compare(report, "cross-entropy loss", $"n{n} vocab{vocab}", [(float)gpuLoss], [(float)loss], 1e-4 * n, 1e-5);
        CrossEntropy.BackwardInPlace(logits, labels, lse, 1f / n, n, vocab);
        CrossEntropyKernels.BackwardInPlace(acc, gz.View, gl.View, glse.View, 1f / n, n, vocab);
        Compare(report, "cross-entropy dlogits", $"n{n} vocab{vocab}", Data.Down(acc, gz.View), logits, 1e-9, 1e-4);
    }
}

/// <summary>Deterministic inputs and device downloads.</summary>
internal static class Data
{
    public static float[] Random(int count, int seed, float range = 1f) => PeftKernels.Testing.TinyLlama.Uniform(count, seed, range);

    public static float[] Down(Accelerator accelerator, ArrayView1D<float, Stride1D.Dense> view)
    {
        accelerator.Synchronize();
        return view.GetAsArray1D();
    }
}
