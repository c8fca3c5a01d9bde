// Routed segmented LoRA (docs/formats/mixlora.md#cost): MixLoRA's down-projection deltas, added
// straight into the frozen down projection's output. y [n, out] (consumed), x [R, in] (the R = k·n
// routed rows sorted by expert), token[i] and slot[i] the (token, slot) of row i, w [n, k] the
// routing weights; segments and adapters as in SegmentedLoraBranch:
//   d[seg t]         = s_t · drop_t(x[seg t]) · A_tᵀ · B_tᵀ          [R, out]  (0 outside every segment)
//   y'[token[i], :]  = y[token[i], :] + w[token[i], slot[i]] · d[i, :]          for every row i
// Backward, g = dL/dy':
//   dy = g (passed on);  dd[i] = w[token[i], slot[i]] · g[token[i]];  dw[token[i], slot[i]] = <d[i], g[token[i]]>;
//   then SegmentedLoraBranch's chain rule with dd as its output gradient (dA_t, dB_t, dx; dx added into
//   x's gradient when it has one).
// = RoutedSum of SegmentedLoraBranch(zeros) added to y, within fp32 rounding (y's rows take the routed
// terms one by one instead of their sum). Why: that composition allocated a zeroed [R, out] buffer, the
// routed sum's [n, out] output, the add's output and in the backward a fresh [R, out] gradient; here d
// lives in one pooled buffer from the forward to the backward (dd is written over it once dw has read
// each row), and y's storage takes the sum. Host tensors only. Kernels: SegmentedLoraTraining, MoeRouting.
using System.Buffers;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// y + Σ_i w[token[i], slot[i]]·(s_t·drop_t(x[i])·A_tᵀ·B_tᵀ) into row token[i] of y [n, out], for every row i of x [R, in] in segment t;
    /// <paramref name="y"/> is consumed (its storage receives the sum). Gradients into y, x, w and every adapter.
    /// </summary>
    /// <exception cref="ArgumentException">A shape does not match (x's rows, the token and slot lists, w [n, k]), or as <see cref="SegmentedLoraBranch"/>.</exception>
    /// <exception cref="ArgumentException">A token or slot is outside [0, n) or [0, k).</exception>
    public static Tensor RoutedSegmentedLoraBranch(Tensor y, Tensor x, int[] tokens, int[] slots, Tensor weights, IReadOnlyList<LoraFactors> adapters,
        int[] segmentStarts, float dropout, ulong[]? seeds, KernelOptions kernel = default)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(slots);
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(segmentStarts);
        if (x.Device.IsGpu || y.Device.IsGpu || weights.Device.IsGpu)
        {
            throw new NotSupportedException("routed segmented LoRA branch: host tensors only.");
        }

        int rows = x.Rows, inF = x.Columns, n = y.Rows, outF = y.Columns, k = weights.Columns;
        if (tokens.Length != rows || slots.Length != rows || weights.Rows != n)
        {
            throw new ArgumentException($"routed segmented LoRA branch: x [{string.Join(", ", x.Shape)}] with {tokens.Length} tokens and {slots.Length} slots, "
                + $"w [{string.Join(", ", weights.Shape)}] and y [{string.Join(", ", y.Shape)}] (need one token and slot per row of x, and w with y's {n} rows).", nameof(tokens));
        }

        Kernels.MoeRoutingShapes.Routes(tokens, slots, n, k);
        var (a, b, scales, seedList, h) = SegmentedOperands(adapters, segmentStarts, seeds, rows, inF, outF, "routed segmented LoRA branch");
        int length = checked(rows * outF);
        var pooled = ArrayPool<float>.Shared.Rent(length);
        pooled.AsSpan(0, length).Clear();
        var yd = y.Data;
        SegmentedLoraTraining.ForwardAccumulate(x.Data, segmentStarts, a, b, scales, seedList, dropout, pooled.AsSpan(0, length), h, rows, inF, outF, kernel);
        MoeRouting.RoutedSum(pooled.AsSpan(0, length), tokens, slots, weights.Data, yd, n, outF, k, kernel);
        bool record = Tape.IsRecording && (y.RequiresGrad || x.RequiresGrad || weights.RequiresGrad || adapters.Any(l => l.A.RequiresGrad || l.B.RequiresGrad));
        if (!record)
        {
            ArrayPool<float>.Shared.Return(pooled);
            return y;
        }

        var output = new Tensor(yd, y.Shape);
        Tape.Record(output, () =>
        {
            var g = output.Grad!;
            var d = pooled.AsSpan(0, length);
            var dw = weights.RequiresGrad ? new float[n * k] : [];
            // dw reads each row of d before dd overwrites it (MoeRouting.RoutedSumBackward allows dpart over part).
            MoeRouting.RoutedSumBackward(g, d, tokens, slots, weights.Data, d, dw, n, outF, k, options: kernel);
            SegmentedLoraGrads(d, x, adapters, segmentStarts, h, a, b, scales, seedList, dropout, rows, inF, outF, kernel);
            ArrayPool<float>.Shared.Return(pooled);

            Grad.AddOwned(weights, dw);
            Grad.AddOwned(y, g);
        });
        return output;
    }
}
