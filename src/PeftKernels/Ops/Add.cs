// Element-wise sum (the residual connections): y = a + b, a and b of one shape; da = db = dy.
// CPU: TensorPrimitives.Add; GPU: AddKernels.
using System.Numerics.Tensors;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>a + b, element-wise (residual connections).</summary>
    public static Tensor Add(Tensor a, Tensor b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        OpChecks.SameShape(a, b, "a", "b");
        if (a.Device.IsGpu)
        {
            return AddOnDevice(a, b);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)a.Count));
        TensorPrimitives.Add(a.Data, b.Data, y);
        var output = new Tensor(y, a.Shape);
        if (Tape.ShouldRecord(a, b))
        {
            Tape.Record(output, () =>
            {
                if (a.RequiresGrad)
                {
                    Grad.Add(a, output.Grad!);
                }

                if (b.RequiresGrad)
                {
                    Grad.Add(b, output.Grad!);
                }
            });
        }

        return output;
    }

    private static Tensor AddOnDevice(Tensor a, Tensor b) =>
        OpChecks.TwoInputsOnDevice(a, b, nameof(b), AddKernels.Forward, (accelerator, dy) =>
        {
            DeviceGrad.GiveCopy(a, accelerator, dy);
            DeviceGrad.GiveCopy(b, accelerator, dy);
        });
}
