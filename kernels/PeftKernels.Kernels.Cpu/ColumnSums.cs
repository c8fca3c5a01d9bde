// Column sums on the CPU, the gradient of a bias row added to every row of y [rows, cols]:
//   dst[j] += scale · Σ_i g[i, j]
// The sum starts from 0 and adds the rows in order i = 0, 1, … in fp32 (vectorised across columns, so
// each column's order is the row order); then one multiply by scale (skipped when scale = 1, which
// would not change it) and one add into dst. With dst = 0 before the call this is exactly the row-order
// sum, and with a scale it is fl(scale · sum): the LoRA branch's dbias_B = s · Σ g.
// The GPU's ColumnSumsKernels.Add computes the same quantity with a fixed slice order (same values up
// to fp32 reassociation).
using System.Buffers;
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>dst += scale·(column sums of g): the one bias-gradient helper.</summary>
public static class ColumnSums
{
    /// <summary>dst[j] += scale·Σ_i g[i, j] for g [rows, cols] and dst [cols].</summary>
    /// <param name="g">The rows to sum [rows, cols] (a gradient dL/dy).</param>
    /// <param name="dst">The accumulator [cols] (a bias gradient).</param>
    /// <param name="rows">Rows of g.</param>
    /// <param name="cols">Columns of g and length of dst.</param>
    /// <param name="scale">Multiplies the sums before they are added (1: no multiply).</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, a dim is out of range, or scale is not finite.</exception>
    public static void Add(ReadOnlySpan<float> g, Span<float> dst, int rows, int cols, float scale = 1f)
    {
        ColumnSumsShapes.Sum(g.Length, dst.Length, rows, cols, scale);
        float[] rented = ArrayPool<float>.Shared.Rent(cols);
        try
        {
            var sums = rented.AsSpan(0, cols);
            sums.Clear();
            for (int i = 0; i < rows; i++)
            {
                TensorPrimitives.Add(sums, g.Slice(i * cols, cols), sums);
            }

            if (scale != 1f)
            {
                TensorPrimitives.Multiply(sums, scale, sums);
            }

            TensorPrimitives.Add(dst, sums, dst);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }
}
