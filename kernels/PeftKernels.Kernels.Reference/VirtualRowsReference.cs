// Virtual rows of prompt learning (docs/formats/prompt-learning.md#ops) in double. Row-major shapes:
// PrependRows: a shared block p [n, width], a window of d columns starting at column c, x [batch·t, d]
//   y [batch·(n+t), d]: batch row b is p[:, c..c+d) followed by x's rows b·t..b·t+t−1
//   dx = the t trailing rows of each batch row of dy;  dp[:, c..c+d) = Σ_b the n leading rows of batch row b of dy
// DropLeadingRows: x [batch·(n+t), d] → y [batch·t, d], the n leading rows of each batch row dropped
//   dx = dy scattered back to the kept rows, zero on the dropped ones
// Activation: ReLU y = max(x, 0), dy/dx = [x > 0];  tanh y = tanh(x), dy/dx = 1 − y²
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision prepend / drop of virtual rows and the activations: the specification of Kernels.Cpu.VirtualRows.</summary>
public static class VirtualRowsReference
{
    /// <summary>[p[:, c..c+d) ; x_b] for each batch row b.</summary>
    public static double[] Prepend(double[] p, double[] x, int batch, int n, int width, int column, int d)
    {
        int t = x.Length / (batch * d);
        var y = new double[batch * (n + t) * d];
        for (int b = 0; b < batch; b++)
        {
            for (int r = 0; r < n + t; r++)
            {
                for (int j = 0; j < d; j++)
                {
                    y[(((b * (n + t)) + r) * d) + j] = r < n ? p[(r * width) + column + j] : x[(((b * t) + r - n) * d) + j];
                }
            }
        }

        return y;
    }

    /// <summary>(dp [n, width], zero outside the window; dx [batch·t, d]) for the upstream gradient dy.</summary>
    public static (double[] Dp, double[] Dx) PrependBackward(double[] dy, int batch, int n, int t, int width, int column, int d)
    {
        var dp = new double[n * width];
        var dx = new double[batch * t * d];
        for (int b = 0; b < batch; b++)
        {
            for (int r = 0; r < n + t; r++)
            {
                for (int j = 0; j < d; j++)
                {
                    double g = dy[(((b * (n + t)) + r) * d) + j];
                    if (r < n)
                    {
                        dp[(r * width) + column + j] += g;
                    }
                    else
                    {
                        dx[(((b * t) + r - n) * d) + j] = g;
                    }
                }
            }
        }

        return (dp, dx);
    }

    /// <summary>The rows of x [batch·(n+t), d] without the n leading ones of each batch row.</summary>
    public static double[] DropLeading(double[] x, int batch, int n, int d)
    {
        int t = (x.Length / (batch * d)) - n;
        var y = new double[batch * t * d];
        for (int b = 0; b < batch; b++)
        {
            Array.Copy(x, ((b * (n + t)) + n) * d, y, b * t * d, t * d);
        }

        return y;
    }

    /// <summary>dx [batch·(n+t), d]: dy's rows back in place, zeros on the dropped rows.</summary>
    public static double[] DropLeadingBackward(double[] dy, int batch, int n, int d)
    {
        int t = dy.Length / (batch * d);
        var dx = new double[batch * (n + t) * d];
        for (int b = 0; b < batch; b++)
        {
            Array.Copy(dy, b * t * d, dx, ((b * (n + t)) + n) * d, t * d);
        }

        return dx;
    }

    /// <summary>max(x, 0).</summary>
    public static double[] Relu(double[] x) => [.. x.Select(v => v > 0 ? v : 0)];

    /// <summary>dy ⊙ [x > 0].</summary>
    public static double[] ReluBackward(double[] dy, double[] x) => [.. dy.Select((g, i) => x[i] > 0 ? g : 0)];

    /// <summary>tanh(x).</summary>
    public static double[] Tanh(double[] x) => [.. x.Select(Math.Tanh)];

    /// <summary>dy ⊙ (1 − tanh(x)²).</summary>
    public static double[] TanhBackward(double[] dy, double[] x) => [.. dy.Select((g, i) => g * (1 - (Math.Tanh(x[i]) * Math.Tanh(x[i]))))];
}
