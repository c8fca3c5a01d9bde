// What every op in this folder shares: a new uninitialised tensor on a device, and the argument
// checks that name the tensor and the expected versus actual shape or device.

namespace PeftKernels.Ops;

/// <summary>Shared helpers of the differentiable ops.</summary>
internal static class OpChecks
{
    /// <summary>A new uninitialised fp32 tensor on <paramref name="device"/>.</summary>
    public static Tensor DeviceTensor(Device device, int[] shape) =>
        new(device, device.Accelerator.Rent<float>(shape.Aggregate(1L, (a, d) => a * d)), shape);

    /// <summary>Throws when an op on an accelerator would have to record a gradient that devices do not implement.</summary>
    public static void DeviceInferenceOnly(bool record, string op)
    {
        if (record)
        {
            throw new NotSupportedException($"{op}: this gradient is not implemented on a GPU device (a trainable base weight, bias or lora_B bias "
                + "under DoRA or next to extra adapter branches); train it on the cpu device, or run inference inside Tape.NoGrad().");
        }
    }

    /// <summary>Checks that <paramref name="other"/> is on <paramref name="device"/>, naming it otherwise.</summary>
    public static void SameDevice(Device device, Tensor other, string name)
    {
        if (!ReferenceEquals(device, other.Device))
        {
            throw new ArgumentException($"{name} is on {other.Device} but the op runs on {device}; move tensors and the model with To(device) first.", name);
        }
    }

    /// <summary>
    /// An element-wise op of two same-shaped inputs on their device: <paramref name="forward"/> writes y from (a, b); while
    /// recording, <paramref name="backward"/> receives dy and hands the inputs their gradients.
    /// </summary>
    public static Tensor TwoInputsOnDevice(Tensor a, Tensor b, string nameB,
        Action<Accelerator, ArrayView1D<float, Stride1D.Dense>, ArrayView1D<float, Stride1D.Dense>, ArrayView1D<float, Stride1D.Dense>> forward,
        Action<Accelerator, ArrayView1D<float, Stride1D.Dense>> backward)
    {
        var device = a.Device;
        SameDevice(device, b, nameB);
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, a.Shape);
        forward(accelerator, a.View(device), b.View(device), output.View(device));
        if (Tape.ShouldRecord(a, b))
        {
            Tape.Record(output, () => backward(accelerator, output.DeviceGrad));
        }

        return output;
    }

    /// <summary>
    /// A one-input op on its device whose output has the input's shape: <paramref name="forward"/> writes y from x; while
    /// recording, <paramref name="backward"/> receives (dy, y, dx) and fills dx, which is then handed to x.
    /// </summary>
    public static Tensor OneInputOnDevice(Tensor x,
        Action<Accelerator, ArrayView1D<float, Stride1D.Dense>, ArrayView1D<float, Stride1D.Dense>> forward,
        Action<Accelerator, ArrayView1D<float, Stride1D.Dense>, ArrayView1D<float, Stride1D.Dense>, ArrayView1D<float, Stride1D.Dense>> backward)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = DeviceTensor(device, x.Shape);
        forward(accelerator, x.View(device), output.View(device));
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                backward(accelerator, output.DeviceGrad, output.View(device), dx.View);
                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }

    /// <summary>Checks that two inputs of an element-wise op have the same shape.</summary>
    public static void SameShape(Tensor a, Tensor b, string nameA, string nameB)
    {
        if (!a.Shape.AsSpan().SequenceEqual(b.Shape))
        {
            throw new ArgumentException($"{nameA} has shape [{string.Join(", ", a.Shape)}] but {nameB} has [{string.Join(", ", b.Shape)}]; they must match.", nameB);
        }
    }
}
