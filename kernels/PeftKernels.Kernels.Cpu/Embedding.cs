// Token embedding on the CPU: weight [vocab, dim] stored as fp32, bf16 bits or fp16; ids [n]; y [n, dim]:
//   y[t, j] = weight[ids[t], j]                     (bf16 and fp16 widened exactly to fp32)
// Backward (the weight is the only operand with a gradient; ids are integers):
//   dw[v, :] += Σ_{t: ids[t] = v} dy[t, :]          (accumulated into dw in token order t = 0, 1, …)
// Token order makes the sum the same on every run and matches the GPU's EmbeddingKernels.Backward,
// which adds each id's tokens in ascending t starting from 0 (bit-identical when dw starts at zero).
// Every id is checked (0 ≤ id < vocab) before anything is written.
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Token embedding gather and its scatter-add backward on the CPU.</summary>
public static class Embedding
{
    /// <summary>y[t, :] = weight[ids[t], :] with an fp32 table.</summary>
    /// <param name="weight">The table [vocab, dim].</param>
    /// <param name="ids">Token ids [n], each in [0, vocab).</param>
    /// <param name="y">Output [n, dim].</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, or an id is out of range.</exception>
    public static void Forward(ReadOnlySpan<float> weight, ReadOnlySpan<int> ids, Span<float> y, int vocab, int dim)
    {
        Validate(weight.Length, ids, y.Length, vocab, dim);
        for (int t = 0; t < ids.Length; t++)
        {
            weight.Slice(ids[t] * dim, dim).CopyTo(y.Slice(t * dim, dim));
        }
    }

    /// <summary>y[t, :] = weight[ids[t], :] with a bf16 table (bit patterns), widened to fp32.</summary>
    /// <param name="weightBf16">The table [vocab, dim] as bf16 bit patterns.</param>
    /// <param name="ids">Token ids [n], each in [0, vocab).</param>
    /// <param name="y">Output [n, dim].</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, or an id is out of range.</exception>
    public static void Forward(ReadOnlySpan<ushort> weightBf16, ReadOnlySpan<int> ids, Span<float> y, int vocab, int dim)
    {
        Validate(weightBf16.Length, ids, y.Length, vocab, dim);
        for (int t = 0; t < ids.Length; t++)
        {
            var bits = weightBf16.Slice(ids[t] * dim, dim);
            var row = y.Slice(t * dim, dim);
            for (int j = 0; j < dim; j++)
            {
                row[j] = Bf16.ToSingle(bits[j]);
            }
        }
    }

    /// <summary>y[t, :] = weight[ids[t], :] with an IEEE fp16 table, widened to fp32.</summary>
    /// <param name="weightF16">The table [vocab, dim] in fp16.</param>
    /// <param name="ids">Token ids [n], each in [0, vocab).</param>
    /// <param name="y">Output [n, dim].</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, or an id is out of range.</exception>
    public static void Forward(ReadOnlySpan<Half> weightF16, ReadOnlySpan<int> ids, Span<float> y, int vocab, int dim)
    {
        Validate(weightF16.Length, ids, y.Length, vocab, dim);
        for (int t = 0; t < ids.Length; t++)
        {
            TensorPrimitives.ConvertToSingle(weightF16.Slice(ids[t] * dim, dim), y.Slice(t * dim, dim));
        }
    }

    /// <summary>dw[ids[t], :] += dy[t, :] for t = 0, 1, … in order (dw accumulates; rows not named by ids are untouched).</summary>
    /// <param name="dy">Gradient of the output [n, dim], n = ids.Length.</param>
    /// <param name="ids">The forward's token ids [n], each in [0, vocab).</param>
    /// <param name="dw">Gradient of the table [vocab, dim], accumulated into.</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, or an id is out of range.</exception>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<int> ids, Span<float> dw, int vocab, int dim)
    {
        EmbeddingShapes.Backward(dy.Length, dw.Length, ids.Length, vocab, dim);
        EmbeddingShapes.Ids(ids, vocab);
        for (int t = 0; t < ids.Length; t++)
        {
            var target = dw.Slice(ids[t] * dim, dim);
            TensorPrimitives.Add(target, dy.Slice(t * dim, dim), target);
        }
    }

    private static void Validate(int weight, ReadOnlySpan<int> ids, int y, int vocab, int dim)
    {
        EmbeddingShapes.Forward(weight, ids.Length, y, ids.Length, vocab, dim);
        EmbeddingShapes.Ids(ids, vocab);
    }
}
