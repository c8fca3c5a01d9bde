// Virtual rows of prompt learning (docs/formats/prompt-learning.md#ops). Shapes, row-major:
//   Prepend:      p [n, width] (a window of d columns from column c is read), x [batch·t, d] → y [batch·(n+t), d];
//                 batch row b of y = p[:, c..c+d) then x's rows b·t .. b·t+t−1.
//   Backward:     dx = the t trailing rows of each batch row of dy (a copy);
//                 dp[:, c..c+d) += Σ_b the n leading rows of batch row b of dy (summed in batch order: deterministic).
//   DropLeading:  x [batch·(n+t), d] → y [batch·t, d]; backward scatters dy back, zeros on the dropped rows.
//   Relu / Tanh:  y = max(x, 0), dx = dy ⊙ [x > 0];  y = tanh(x), dx = dy ⊙ (1 − y²).
// Why: prompt tuning puts N learned rows before every sequence's token embeddings and drops them again before
// lm_head; prefix tuning puts a layer's N learned key/value rows before every sequence's keys and values. Pure
// copies and sums (memory bound), so plain spans suffice; the activations go through TensorPrimitives.
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Prepending a shared block of rows to each batch row, dropping leading rows again, and the ReLU / tanh activations (CPU).</summary>
public static class VirtualRows
{
    /// <summary>y = [p[:, column..column+d) ; x_b] for each of the <paramref name="batch"/> rows of x.</summary>
    /// <exception cref="ArgumentException">A span's length differs from what the dims imply.</exception>
    public static void Prepend(ReadOnlySpan<float> p, ReadOnlySpan<float> x, Span<float> y, int batch, int n, int t, int width, int column, int d)
    {
        VirtualRowsShapes.Prepend(p.Length, x.Length, y.Length, batch, n, t, width, column, d);
        for (int b = 0; b < batch; b++)
        {
            var row = y.Slice(b * (n + t) * d, (n + t) * d);
            for (int r = 0; r < n; r++)
            {
                p.Slice((r * width) + column, d).CopyTo(row.Slice(r * d, d));
            }

            x.Slice(b * t * d, t * d).CopyTo(row[(n * d)..]);
        }
    }

    /// <summary>
    /// Backward of <see cref="Prepend"/>: writes dx (when not empty) and adds the batch sum of the leading rows into the window of
    /// dp (when not empty; dp is [n, width] and is accumulated into, not overwritten).
    /// </summary>
    public static void PrependBackward(ReadOnlySpan<float> dy, Span<float> dp, Span<float> dx, int batch, int n, int t, int width, int column, int d)
    {
        VirtualRowsShapes.PrependBackward(dy.Length, dp.Length, dx.Length, batch, n, t, width, column, d);

        for (int b = 0; b < batch; b++)
        {
            var row = dy.Slice(b * (n + t) * d, (n + t) * d);
            if (!dp.IsEmpty)
            {
                for (int r = 0; r < n; r++)
                {
                    var target = dp.Slice((r * width) + column, d);
                    TensorPrimitives.Add(target, row.Slice(r * d, d), target);
                }
            }

            if (!dx.IsEmpty)
            {
                row[(n * d)..].CopyTo(dx.Slice(b * t * d, t * d));
            }
        }
    }

    /// <summary>y [batch·t, d] = x [batch·(n+t), d] without the n leading rows of each batch row.</summary>
    public static void DropLeading(ReadOnlySpan<float> x, Span<float> y, int batch, int n, int t, int d)
    {
        VirtualRowsShapes.DropLeading(x.Length, y.Length, batch, n, t, d);

        for (int b = 0; b < batch; b++)
        {
            x.Slice(((b * (n + t)) + n) * d, t * d).CopyTo(y.Slice(b * t * d, t * d));
        }
    }

    /// <summary>Backward of <see cref="DropLeading"/>: dx [batch·(n+t), d] gets dy's rows in place and zeros on the dropped rows.</summary>
    public static void DropLeadingBackward(ReadOnlySpan<float> dy, Span<float> dx, int batch, int n, int t, int d)
    {
        VirtualRowsShapes.DropLeadingBackward(dy.Length, dx.Length, batch, n, t, d);

        for (int b = 0; b < batch; b++)
        {
            var row = dx.Slice(b * (n + t) * d, (n + t) * d);
            row[..(n * d)].Clear();
            dy.Slice(b * t * d, t * d).CopyTo(row[(n * d)..]);
        }
    }

    /// <summary>y = max(x, 0).</summary>
    public static void Relu(ReadOnlySpan<float> x, Span<float> y)
    {
        VirtualRowsShapes.Elementwise(x.Length, y.Length);
        TensorPrimitives.Max(x, 0f, y);
    }

    /// <summary>dx = dy where x &gt; 0, else 0.</summary>
    public static void ReluBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dx)
    {
        VirtualRowsShapes.ElementwiseBackward(dy.Length, x.Length, dx.Length);
        for (int i = 0; i < dx.Length; i++)
        {
            dx[i] = x[i] > 0 ? dy[i] : 0f;
        }
    }

    /// <summary>y = tanh(x).</summary>
    public static void Tanh(ReadOnlySpan<float> x, Span<float> y)
    {
        VirtualRowsShapes.Elementwise(x.Length, y.Length);
        TensorPrimitives.Tanh(x, y);
    }

    /// <summary>dx = dy ⊙ (1 − y²), y the forward output.</summary>
    public static void TanhBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> y, Span<float> dx)
    {
        VirtualRowsShapes.ElementwiseBackward(dy.Length, y.Length, dx.Length);
        for (int i = 0; i < dx.Length; i++)
        {
            dx[i] = dy[i] * (1f - (y[i] * y[i]));
        }
    }
}
