// Autograd ops of MixLoRA's token routing (docs/formats/mixlora.md#routing); kernels in
// Kernels.Cpu.MoeRouting, specification in Kernels.Reference.MoeRoutingReference. Rows are tokens.
//   Softmax            p = softmax(z) per row                        dz = p ⊙ (g − <g, p>)
//   TopKRouting        sel = top-k of p per row, w = p[sel] / Σ p[sel]   dp[sel_j] = (g_j − <g, w>) / Σ p[sel]
//   LoadBalancingLoss  aux = coef·E·Σ_e F[e]·P[e] over all routed layers pooled (F: share of the (token, slot)
//                      choices that picked e, a constant; P: mean probability of e)
//                      d aux / d p_l[t, e] = coef·E·F[e] / (L·n)
//   (GatherRows, y = x[rows, :], is the shared op of Ops/RowSelect.cs)
//   RoutedSum          y[rows_e[i], :] += w[rows_e[i], slot_e[i]]·part_e[i, :] over experts e
//                      dpart_e[i, :] = w·g[rows_e[i], :];  dw[rows_e[i], slot_e[i]] = <part_e[i, :], g[rows_e[i], :]>
//   ScaleElements      y = x ⊙ f for a constant f (the router's jitter noise)   dx = g ⊙ f
// RoutedSumScratch (internal, MixLoRA's host path): RoutedSum into a ScratchArrays buffer that its backward
// hands back with the output's gradient (the caller guarantees no reader after that backward).
// Why these ops: they let a MixLoRA layer run each expert over only the tokens routed to it (gathered
// rows) and weight the results by the differentiable routing weights, instead of running every expert
// on every token. GPU: MoeRoutingKernels (device bodies in Ops/MoeRouting.Device.cs).
using System.Numerics.Tensors;

namespace PeftKernels.Ops;

/// <summary>The routing of a top-k mixture: renormalised weights [n, k] (autograd) and the chosen experts [n·k] (row-major).</summary>
/// <param name="Weights">w [n, k]: the chosen experts' probabilities divided by their sum.</param>
/// <param name="Selected">sel [n·k]: the chosen experts of each token, most probable first.</param>
public sealed record TopKRoute(Tensor Weights, int[] Selected);

public static partial class Functional
{
    /// <summary>Row-wise softmax of z [n, E].</summary>
    public static Tensor Softmax(Tensor z)
    {
        ArgumentNullException.ThrowIfNull(z);
        int n = z.Rows, e = z.Columns;
        if (z.Device.IsGpu)
        {
            return SoftmaxOnDevice(z, n, e);
        }

        var p = GC.AllocateUninitializedArray<float>(n * e);
        Kernels.Cpu.MoeRouting.Softmax(z.Data, p, n, e);
        var output = new Tensor(p, z.Shape);
        if (Tape.ShouldRecord(z))
        {
            Tape.Record(output, () => Grad.Accumulate(z, dz => Kernels.Cpu.MoeRouting.SoftmaxBackward(output.Grad!, p, dz, n, e)));
        }

        return output;
    }

    /// <summary>The <paramref name="k"/> most probable experts of each row of p [n, E] and their renormalised weights (autograd into p).</summary>
    public static TopKRoute TopKRouting(Tensor probs, int k)
    {
        ArgumentNullException.ThrowIfNull(probs);
        int n = probs.Rows, e = probs.Columns;
        if (k < 1 || k > e)
        {
            throw new ArgumentOutOfRangeException(nameof(k), $"top-k routing: k = {k} must be in [1, {e}] (the number of experts).");
        }

        if (probs.Device.IsGpu)
        {
            return TopKRoutingOnDevice(probs, n, e, k);
        }

        var sel = new int[n * k];
        var w = GC.AllocateUninitializedArray<float>(n * k);
        Kernels.Cpu.MoeRouting.TopK(probs.Data, sel, w, n, e, k);
        var output = new Tensor(w, n, k);
        if (Tape.ShouldRecord(probs))
        {
            Tape.Record(output, () => Grad.Accumulate(probs, dp => Kernels.Cpu.MoeRouting.TopKBackward(output.Grad!, probs.Data, sel, w, dp, n, e, k)));
        }

        return new TopKRoute(output, sel);
    }

    /// <summary>
    /// coef·E·Σ_e F[e]·P[e] over the routed layers (each p_l [n, E] with its choices sel_l [n·k]), all layers' tokens pooled;
    /// a [1] tensor with gradients into every p_l.
    /// </summary>
    public static Tensor LoadBalancingLoss(IReadOnlyList<Tensor> probs, IReadOnlyList<int[]> selected, int k, float coef)
    {
        ArgumentNullException.ThrowIfNull(probs);
        ArgumentNullException.ThrowIfNull(selected);
        if (probs.Count == 0 || probs.Count != selected.Count)
        {
            throw new ArgumentException($"load-balancing loss: {probs.Count} probability tensors and {selected.Count} selections; give one of each per routed layer (at least one).", nameof(probs));
        }

        int n = probs[0].Rows, e = probs[0].Columns;
        for (int l = 0; l < probs.Count; l++)
        {
            if (probs[l].Rows != n || probs[l].Columns != e || selected[l].Length != n * k)
            {
                throw new ArgumentException($"load-balancing loss: layer {l} has p [{string.Join(", ", probs[l].Shape)}] and {selected[l].Length} choices; expected [{n}, {e}] and {n * k}.", nameof(probs));
            }

            if (probs[0].Device.IsGpu)
            {
                OpChecks.SameDevice(probs[0].Device, probs[l], nameof(probs));
            }
        }

        // P's sums per expert and layer (sums[l·E + j] = Σ_t p_l[t, j]): on the device, deterministic column sums read back once.
        var sums = probs[0].Device.IsGpu ? ExpertSumsOnDevice(probs, n, e) : null;
        double total = (double)probs.Count * n;
        var grad = new float[e];
        foreach (var sel in selected)
        {
            foreach (int expert in sel)
            {
                grad[expert] += 1;
            }
        }

        double loss = 0;
        for (int j = 0; j < e; j++)
        {
            double pSum = 0;
            for (int l = 0; l < probs.Count; l++)
            {
                if (sums != null)
                {
                    pSum += sums[(l * e) + j];
                    continue;
                }

                var data = probs[l].Data;
                for (int t = 0; t < n; t++)
                {
                    pSum += data[(t * e) + j];
                }
            }

            // grad[j] holds the count of choices of expert j until here: F[j] = count / total.
            double f = grad[j] / total;
            loss += f * pSum / total;
            grad[j] = (float)(coef * e * f / total);
        }

        var output = new Tensor([(float)(coef * e * loss)], 1);
        if (Tape.IsRecording && probs.Any(p => p.RequiresGrad))
        {
            Tape.Record(output, () =>
            {
                float g = output.Grad![0];
                if (sums != null)
                {
                    LoadBalancingBackwardOnDevice(probs, grad, g, n, e);
                    return;
                }

                foreach (var p in probs.Where(p => p.RequiresGrad))
                {
                    var dp = GC.AllocateUninitializedArray<float>(n * e);
                    for (int t = 0; t < n; t++)
                    {
                        TensorPrimitives.Multiply(grad, g, dp.AsSpan(t * e, e));
                    }

                    Grad.AddOwned(p, dp);
                }
            });
        }

        return output;
    }

    /// <summary>
    /// Σ over experts of the routing-weighted rows of each part: y [n, c] with y[rows_e[i], :] += w[rows_e[i], slots_e[i]]·part_e[i, :]
    /// (w [n, k]); gradients into every part and into w.
    /// </summary>
    public static Tensor RoutedSum(IReadOnlyList<Tensor> parts, IReadOnlyList<int[]> rows, IReadOnlyList<int[]> slots, Tensor weights, int n,
        KernelOptions kernel = default) => RoutedSumCore(parts, rows, slots, weights, n, kernel, scratch: false);

    /// <summary>
    /// <see cref="RoutedSum"/> on the host into a pooled array (<see cref="ScratchArrays"/>); the backward returns the output's storage and
    /// gradient to the pool (every reader of the output was recorded after this op and has run by then): only for a temporary that no
    /// one reads once this op's backward has run (MixLoRA's routed activations, read by the frozen down projection).
    /// </summary>
    internal static Tensor RoutedSumScratch(IReadOnlyList<Tensor> parts, IReadOnlyList<int[]> rows, IReadOnlyList<int[]> slots, Tensor weights, int n,
        KernelOptions kernel = default) => RoutedSumCore(parts, rows, slots, weights, n, kernel, scratch: true);

    private static Tensor RoutedSumCore(IReadOnlyList<Tensor> parts, IReadOnlyList<int[]> rows, IReadOnlyList<int[]> slots, Tensor weights, int n,
        KernelOptions kernel, bool scratch)
    {
        ArgumentNullException.ThrowIfNull(parts);
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(slots);
        ArgumentNullException.ThrowIfNull(weights);
        if (parts.Count == 0 || parts.Count != rows.Count || parts.Count != slots.Count)
        {
            throw new ArgumentException($"routed sum: {parts.Count} parts, {rows.Count} row lists and {slots.Count} slot lists; give one of each per expert (at least one).", nameof(parts));
        }

        int c = parts[0].Columns, k = weights.Columns;
        if (weights.Rows != n)
        {
            throw new ArgumentException($"routed sum: weights [{string.Join(", ", weights.Shape)}] must have {n} rows (one per token).", nameof(weights));
        }

        for (int e = 0; e < parts.Count; e++)
        {
            if (parts[e].Columns != c || parts[e].Rows != rows[e].Length)
            {
                throw new ArgumentException($"routed sum: part {e} [{string.Join(", ", parts[e].Shape)}] must be [{rows[e].Length}, {c}] (one row per routed token).", nameof(parts));
            }
        }

        if (weights.Device.IsGpu)
        {
            return RoutedSumOnDevice(parts, rows, slots, weights, n, c, k);
        }

        bool record = Tape.IsRecording && (weights.RequiresGrad || parts.Any(p => p.RequiresGrad));
        float[] y;
        if (scratch && record)
        {
            y = ScratchArrays.Rent(n * c);
            Array.Clear(y);
        }
        else
        {
            y = new float[n * c];
        }

        for (int e = 0; e < parts.Count; e++)
        {
            Kernels.Cpu.MoeRouting.RoutedSum(parts[e].Data, rows[e], slots[e], weights.Data, y, n, c, k, kernel);
        }

        var output = new Tensor(y, n, c);
        if (record)
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                var dw = weights.RequiresGrad ? new float[n * k] : [];
                for (int e = 0; e < parts.Count; e++)
                {
                    // A part whose gradient another node already wrote gets w·g added to it in place (no second [rows, c] buffer).
                    if (parts[e].RequiresGrad && parts[e].Grad is { } existing)
                    {
                        Kernels.Cpu.MoeRouting.RoutedSumBackward(g, parts[e].Data, rows[e], slots[e], weights.Data, existing, dw, n, c, k, accumulate: true, kernel);
                        continue;
                    }

                    var dpart = parts[e].RequiresGrad ? ScratchArrays.Rent((int)parts[e].Count) : [];
                    Kernels.Cpu.MoeRouting.RoutedSumBackward(g, parts[e].Data, rows[e], slots[e], weights.Data, dpart, dw, n, c, k, options: kernel);
                    Grad.AddOwned(parts[e], dpart);
                }

                Grad.AddOwned(weights, dw);
                if (scratch)
                {
                    ScratchArrays.Return(y);
                    if (!ReferenceEquals(g, y))
                    {
                        ScratchArrays.Return(g);
                    }
                }
            });
        }

        return output;
    }

    /// <summary>x ⊙ f for a constant f of x's size (no gradient into f).</summary>
    public static Tensor ScaleElements(Tensor x, float[] factors)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(factors);
        if (factors.Length != x.Count)
        {
            throw new ArgumentException($"scale elements: {factors.Length} factors for x [{string.Join(", ", x.Shape)}] ({x.Count} values).", nameof(factors));
        }

        if (x.Device.IsGpu)
        {
            return ScaleElementsOnDevice(x, factors);
        }

        var y = GC.AllocateUninitializedArray<float>(factors.Length);
        TensorPrimitives.Multiply(x.Data, factors, y);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () => Grad.Accumulate(x, dx => TensorPrimitives.Multiply(output.Grad!, factors, dx)));
        }

        return output;
    }
}
