// Scaling by one scalar s (a one-element tensor: a constant, or a learned parameter):
//   y = s·x;   dx = s·dy;   ds = Σ dy ⊙ x
// Used for a bottleneck adapter's float or "learned" scaling and for Average's weights
// (docs/formats/bottleneck-adapters.md). CPU: TensorPrimitives; no GPU path yet.
using System.Numerics.Tensors;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>s·x for a one-element <paramref name="s"/>.</summary>
    /// <exception cref="NotSupportedException">An input lives on a GPU device.</exception>
    public static Tensor Scale(Tensor x, Tensor s)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(s);
        if (s.Count != 1)
        {
            throw new ArgumentException($"the scale must have one element; it has shape [{string.Join(", ", s.Shape)}].", nameof(s));
        }

        HostOnly(x, "Scale");
        HostOnly(s, "Scale");
        float scale = s.Data[0];
        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        TensorPrimitives.Multiply(x.Data, scale, y);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, s))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                if (x.RequiresGrad)
                {
                    var dx = GC.AllocateUninitializedArray<float>(y.Length);
                    TensorPrimitives.Multiply(dy, scale, dx);
                    Grad.AddOwned(x, dx);
                }

                if (s.RequiresGrad)
                {
                    Grad.AddOwned(s, [TensorPrimitives.Dot(dy, x.Data)]);
                }
            });
        }

        return output;
    }
}
