// IA³ (docs/formats/methods.md#ia3) in double. Shapes, row-major: x [n, in], w [out, in], bias [out] or empty.
// Column scaling (the kernel Ia3.ScaleColumns): x, y [n, f], l [f]
//   y = x ⊙ l            dx = g ⊙ l,  dl = Σ_rows g ⊙ x
// Output scaling (attention modules, l [out]):
//   z = x·wᵀ + bias,  y = z ⊙ l
//   dl = Σ_rows g ⊙ z,  dx = (g ⊙ l)·w
// Input scaling (feed-forward modules, l [in]):
//   y = (x ⊙ l)·wᵀ + bias
//   dl = Σ_rows x ⊙ (g·w),  dx = (g·w) ⊙ l
// Merge: output scaling w ← diag(l)·w, bias ← bias ⊙ l; input scaling w ← w·diag(l).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision IA³ scaling, forward and backward: the specification of Ia3.</summary>
public static class Ia3Reference
{
    /// <summary>y[i, j] = x[i, j] · l[j].</summary>
    public static double[] ScaleColumns(double[] x, double[] l, int n, int features)
    {
        var y = new double[n * features];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < features; j++)
            {
                y[(i * features) + j] = x[(i * features) + j] * l[j];
            }
        }

        return y;
    }

    /// <summary>dx = dy ⊙ l and dl = Σ_rows dy ⊙ x.</summary>
    public static (double[] Dx, double[] Dl) ScaleColumnsBackward(double[] dy, double[] x, double[] l, int n, int features)
    {
        var dx = ScaleColumns(dy, l, n, features);
        var dl = new double[features];
        for (int j = 0; j < features; j++)
        {
            double sum = 0;
            for (int i = 0; i < n; i++)
            {
                sum += dy[(i * features) + j] * x[(i * features) + j];
            }

            dl[j] = sum;
        }

        return (dx, dl);
    }

    /// <summary>Output scaling: y = (x·wᵀ + bias) ⊙ l with l [out]. <paramref name="bias"/> may be empty.</summary>
    public static double[] OutputScalingForward(double[] x, double[] w, double[] bias, double[] l, int n, int inFeatures, int outFeatures) =>
        ScaleColumns(LinearReference.Forward(x, w, bias, n, inFeatures, outFeatures), l, n, outFeatures);

    /// <summary>Output scaling backward: dx = (g ⊙ l)·w and dl = Σ_rows g ⊙ (x·wᵀ + bias).</summary>
    public static (double[] Dx, double[] Dl) OutputScalingBackward(double[] dy, double[] x, double[] w, double[] bias, double[] l,
        int n, int inFeatures, int outFeatures)
    {
        var z = LinearReference.Forward(x, w, bias, n, inFeatures, outFeatures);
        var (gl, dl) = ScaleColumnsBackward(dy, z, l, n, outFeatures);
        return (LinearReference.InputGradient(gl, w, n, inFeatures, outFeatures), dl);
    }

    /// <summary>Input scaling: y = (x ⊙ l)·wᵀ + bias with l [in]. <paramref name="bias"/> may be empty.</summary>
    public static double[] InputScalingForward(double[] x, double[] w, double[] bias, double[] l, int n, int inFeatures, int outFeatures) =>
        LinearReference.Forward(ScaleColumns(x, l, n, inFeatures), w, bias, n, inFeatures, outFeatures);

    /// <summary>Input scaling backward: dx = (g·w) ⊙ l and dl = Σ_rows x ⊙ (g·w).</summary>
    public static (double[] Dx, double[] Dl) InputScalingBackward(double[] dy, double[] x, double[] w, double[] l,
        int n, int inFeatures, int outFeatures)
    {
        var gw = LinearReference.InputGradient(dy, w, n, inFeatures, outFeatures);
        return ScaleColumnsBackward(gw, x, l, n, inFeatures);
    }

    /// <summary>Output-scaling merge: returns (diag(l)·w, bias ⊙ l); bias may be empty.</summary>
    public static (double[] W, double[] Bias) MergeOutputScaling(double[] w, double[] bias, double[] l, int inFeatures, int outFeatures)
    {
        var merged = new double[w.Length];
        for (int o = 0; o < outFeatures; o++)
        {
            for (int p = 0; p < inFeatures; p++)
            {
                merged[(o * inFeatures) + p] = l[o] * w[(o * inFeatures) + p];
            }
        }

        return (merged, bias.Select((b, o) => b * l[o]).ToArray());
    }

    /// <summary>Input-scaling merge: returns w·diag(l).</summary>
    public static double[] MergeInputScaling(double[] w, double[] l, int inFeatures, int outFeatures) =>
        ScaleColumns(w, l, outFeatures, inFeatures);
}
