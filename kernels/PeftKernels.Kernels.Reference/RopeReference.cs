// Rotary position embedding, rotate-half convention, in double. Shapes, row-major: x, y [n, heads, headDim];
// positions [n]; invFreq [headDim/2]. With h = headDim/2, per token t, head and j < h:
//   a = (float)pos_t · invFreq_j   (the angle is specified in fp32, as torch computes it), c = cos a, s = sin a
//   y_j = x_j·c − x_{j+h}·s,   y_{j+h} = x_{j+h}·c + x_j·s
// Backward (y = R·x is linear, dx = Rᵀ·dy):
//   dx_j = dy_j·c + dy_{j+h}·s,  dx_{j+h} = dy_{j+h}·c − dy_j·s
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision RoPE forward/backward: the specification of Rope.</summary>
public static class RopeReference
{
    /// <summary>y = R·x in double.</summary>
    public static double[] Forward(double[] x, int[] positions, float[] invFreq, int n, int heads, int headDim) =>
        Rotate(x, positions, invFreq, n, heads, headDim, 1.0);

    /// <summary>dx = Rᵀ·dy in double.</summary>
    public static double[] Backward(double[] dy, int[] positions, float[] invFreq, int n, int heads, int headDim) =>
        Rotate(dy, positions, invFreq, n, heads, headDim, -1.0);

    private static double[] Rotate(double[] x, int[] positions, float[] invFreq, int n, int heads, int headDim, double sinSign)
    {
        int half = headDim / 2;
        var y = new double[x.Length];
        for (int t = 0; t < n; t++)
        {
            for (int h = 0; h < heads; h++)
            {
                int at = ((t * heads) + h) * headDim;
                for (int j = 0; j < half; j++)
                {
                    float angle = (float)positions[t] * invFreq[j];
                    double c = Math.Cos(angle), s = sinSign * Math.Sin(angle);
                    double x1 = x[at + j], x2 = x[at + half + j];
                    y[at + j] = (x1 * c) - (x2 * s);
                    y[at + half + j] = (x2 * c) + (x1 * s);
                }
            }
        }

        return y;
    }
}
