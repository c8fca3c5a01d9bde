// One MixLoRA MLP layer in double, the naive dense way (docs/formats/mixlora.md#forward): every
// expert runs on every token, and each token keeps the renormalised top-k weights of its chosen
// experts (0 for the others):
//   p = softmax(x·W_gᵀ);  sel, w = top-k of p renormalised
//   out_e = (W_down + s·B_d,e·A_d,e)·(silu((W_gate + s·B_g,e·A_g,e)·x) ⊙ (W_up + s·B_u,e·A_u,e)·x)   for every e
//   y[t] = Σ_j w[t, j]·out_{sel[t, j]}[t]
// This is the reference's formula with its per-expert down projection (no use of W_down's linearity),
// so it specifies the efficient MixLoraBlock, which groups tokens by expert and runs W_down once.
// Experts without a LoRA on a module (a null A) use the frozen weight there.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive dense double-precision MixLoRA MLP: the specification of MixLoraBlock.</summary>
public static class MixLoraReference
{
    /// <summary>One expert's LoRA factors on the three MLP projections (null where not targeted).</summary>
    /// <param name="GateA">A of gate_proj [r, hidden] or null.</param>
    /// <param name="GateB">B of gate_proj [inter, r] or null.</param>
    /// <param name="UpA">A of up_proj [r, hidden] or null.</param>
    /// <param name="UpB">B of up_proj [inter, r] or null.</param>
    /// <param name="DownA">A of down_proj [r, inter] or null.</param>
    /// <param name="DownB">B of down_proj [hidden, r] or null.</param>
    public sealed record Expert(double[]? GateA, double[]? GateB, double[]? UpA, double[]? UpB, double[]? DownA, double[]? DownB);

    /// <summary>y [n, hidden] for x [n, hidden], W_gate/W_up [inter, hidden], W_down [hidden, inter], router [E, hidden].</summary>
    public static double[] Forward(double[] x, double[] wGate, double[] wUp, double[] wDown, double[] router, IReadOnlyList<Expert> experts,
        double scale, int n, int hidden, int inter, int rank, int topK)
    {
        int e = experts.Count;
        var p = MoeRoutingReference.Softmax(LinearReference.Forward(x, router, [], n, hidden, e), n, e);
        var (sel, w) = MoeRoutingReference.TopK(p, n, e, topK);
        var y = new double[n * hidden];
        for (int ex = 0; ex < e; ex++)
        {
            var spec = experts[ex];
            var g = Adapted(x, wGate, spec.GateA, spec.GateB, scale, n, hidden, inter, rank);
            var u = Adapted(x, wUp, spec.UpA, spec.UpB, scale, n, hidden, inter, rank);
            var a = SwiGluReference.Forward(g, u);
            var o = Adapted(a, wDown, spec.DownA, spec.DownB, scale, n, inter, hidden, rank);
            for (int t = 0; t < n; t++)
            {
                for (int j = 0; j < topK; j++)
                {
                    if (sel[(t * topK) + j] != ex)
                    {
                        continue;
                    }

                    for (int c = 0; c < hidden; c++)
                    {
                        y[(t * hidden) + c] += w[(t * topK) + j] * o[(t * hidden) + c];
                    }
                }
            }
        }

        return y;
    }

    /// <summary>The routing choices of <see cref="Forward"/> (to check a finite difference did not change them).</summary>
    public static int[] Selected(double[] x, double[] router, int n, int hidden, int experts, int topK) =>
        MoeRoutingReference.TopK(MoeRoutingReference.Softmax(LinearReference.Forward(x, router, [], n, hidden, experts), n, experts), n, experts, topK).Selected;

    private static double[] Adapted(double[] x, double[] w, double[]? a, double[]? b, double scale, int n, int inF, int outF, int rank)
    {
        var y = LinearReference.Forward(x, w, [], n, inF, outF);
        if (a == null || b == null)
        {
            return y;
        }

        var h = LinearReference.Forward(x, a, [], n, inF, rank);
        var d = LinearReference.Forward(h, b, [], n, rank, outF);
        for (int i = 0; i < y.Length; i++)
        {
            y[i] += scale * d[i];
        }

        return y;
    }
}
