// Gradient plumbing on an accelerator, the device twin of Grad.cs. An op's backward allocates a
// fresh device buffer per input that needs a gradient (Buffer: none when it needs none, and the
// kernel skips an empty view), fills it, and hands it over (Give): a device-only tensor and a host
// parameter with a device mirror (LoRA A/B, an IA³ vector, a norm weight, a base weight in full
// fine-tuning) accumulate it on the device (Tensor.AddDeviceGrad), where AdamWOptimizer steps it;
// a host tensor without a mirror gets it downloaded into its host Grad.
using ILGPU;
using ILGPU.Runtime;

namespace PeftKernels.Autograd;

internal static class DeviceGrad
{
    /// <summary>A gradient buffer for <paramref name="t"/> on <paramref name="device"/>, or none (an empty view: the kernel skips it) when t needs no gradient.</summary>
    public static MemoryBuffer1D<float, Stride1D.Dense>? Buffer(Device device, Tensor t) =>
        t.RequiresGrad ? device.Accelerator.Allocate1D<float>(t.Count) : null;

    /// <summary>
    /// Hands a freshly computed gradient (owned) to <paramref name="t"/>: a device-only tensor and a host parameter with a
    /// device mirror accumulate it on the device; a host tensor without a mirror gets it downloaded into its host Grad.
    /// </summary>
    public static void Give(Tensor t, MemoryBuffer1D<float, Stride1D.Dense>? owned)
    {
        if (owned == null)
        {
            return;
        }

        if (!t.RequiresGrad)
        {
            owned.Dispose();
        }
        else if (t.LivesOnDeviceOnly || t.HasMirror)
        {
            t.AddDeviceGrad(owned);
        }
        else
        {
            owned.Accelerator.Synchronize();
            var host = owned.GetAsArray1D();
            owned.Dispose();
            Grad.AddOwned(t, host);
        }
    }

    /// <summary>Hands each owned gradient to its tensor, in order (see <see cref="Give(Tensor, MemoryBuffer1D{float, Stride1D.Dense}?)"/>).</summary>
    public static void Give(params (Tensor Tensor, MemoryBuffer1D<float, Stride1D.Dense>? Owned)[] grads)
    {
        foreach (var (t, owned) in grads)
        {
            Give(t, owned);
        }
    }

    /// <summary>A device copy of <paramref name="g"/> handed to <paramref name="t"/> (dy passed on unchanged, as by Add).</summary>
    public static void GiveCopy(Tensor t, Accelerator accelerator, ArrayView1D<float, Stride1D.Dense> g)
    {
        if (!t.RequiresGrad)
        {
            return;
        }

        var copy = accelerator.Allocate1D<float>(g.Length);
        copy.View.CopyFrom(g);
        accelerator.Synchronize();
        Give(t, copy);
    }
}
