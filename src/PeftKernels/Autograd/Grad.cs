// Gradient accumulation at the autograd level (kernels overwrite their outputs): the first
// contribution to a tensor's gradient is written straight into a fresh buffer, later ones go
// through a scratch buffer and are added.
using System.Buffers;
using System.Numerics.Tensors;

namespace PeftKernels.Autograd;

internal static class Grad
{
    public delegate void Writer(Span<float> destination);

    /// <summary>Adds the gradient that <paramref name="write"/> produces (overwriting its span) to <paramref name="t"/>.Grad.</summary>
    public static void Accumulate(Tensor t, Writer write)
    {
        if (t.Grad == null)
        {
            var fresh = GC.AllocateUninitializedArray<float>(checked((int)t.Count));
            write(fresh);
            t.Grad = fresh;
            return;
        }

        int count = checked((int)t.Count);
        var scratch = ArrayPool<float>.Shared.Rent(count);
        try
        {
            var span = scratch.AsSpan(0, count);
            write(span);
            TensorPrimitives.Add(t.Grad, span, t.Grad);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(scratch);
        }
    }

    /// <summary>Adds <paramref name="values"/> to <paramref name="t"/>.Grad.</summary>
    public static void Add(Tensor t, ReadOnlySpan<float> values)
    {
        if (t.Grad == null)
        {
            t.Grad = values.ToArray();
        }
        else
        {
            TensorPrimitives.Add(t.Grad, values, t.Grad);
        }
    }

    /// <summary>Adds a freshly allocated gradient that nobody else holds: it becomes the Grad when there is none yet.</summary>
    public static void AddOwned(Tensor t, float[] owned)
    {
        if (!t.RequiresGrad)
        {
            return;
        }

        if (t.Grad == null)
        {
            t.Grad = owned;
        }
        else
        {
            TensorPrimitives.Add(t.Grad, owned, t.Grad);
        }
    }

    /// <summary>
    /// Adds scale·(column sums of g [rows, cols]) to <paramref name="t"/>.Grad ([cols]) through the ColumnSums kernel: the gradient
    /// of a broadcast bias (scale 1), or of a LoRA lora_B bias that enters the output as s·bias_B (scale s).
    /// </summary>
    public static void AddColumnSums(Tensor t, ReadOnlySpan<float> g, int rows, int cols, float scale)
    {
        if (t.RequiresGrad)
        {
            Kernels.Cpu.ColumnSums.Add(g, t.GradOrCreate(), rows, cols, scale);
        }
    }
}
