namespace PeftKernels;

/// <summary>A model weight: trainable ones get gradients and optimizer state; frozen ones get neither.</summary>
public sealed class Parameter : Tensor
{
    /// <summary>An fp32 parameter over <paramref name="data"/> (not copied).</summary>
    public Parameter(float[] data, int[] shape, bool trainable = false)
        : base(data, shape) => Trainable = trainable;

    /// <summary>A frozen bf16 parameter over bit patterns (not copied).</summary>
    public Parameter(ushort[] bits, int[] shape)
        : base(bits, shape)
    {
    }

    /// <summary>A frozen fp16 parameter (not copied).</summary>
    public Parameter(Half[] values, int[] shape)
        : base(values, shape)
    {
    }

    /// <summary>A frozen 4-bit parameter.</summary>
    public Parameter(Kernels.Cpu.QuantizedWeight weight)
        : base(weight)
    {
    }

    /// <summary>Whether backward computes a gradient for it and the optimizer updates it (fp32 only).</summary>
    public bool Trainable
    {
        get => RequiresGrad;
        set
        {
            if (value && DType != TensorDType.F32)
            {
                throw new InvalidOperationException($"only fp32 parameters can be trainable; this one is {DType} [{string.Join(", ", Shape)}].");
            }

            RequiresGrad = value;
            if (!value)
            {
                Grad = null;
            }
        }
    }

    /// <summary>Clears the accumulated gradient (a gradient kept on a device is freed; backward allocates the next one).</summary>
    public void ZeroGrad()
    {
        if (HasDeviceGrad)
        {
            DropGrad();
        }
        else if (Grad != null)
        {
            Array.Clear(Grad);
        }
    }
}
