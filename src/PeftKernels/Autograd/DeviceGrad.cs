// Gradient plumbing on an accelerator, the device twin of Grad.cs. An op's backward rents a
// device array from the pool per input that needs a gradient (Buffer: none when it needs none, and the
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
    public static DeviceArray<float>? Buffer(Device device, Tensor t) =>
        t.RequiresGrad ? device.Accelerator.Rent<float>(t.Count) : null;

    /// <summary>
    /// Hands a freshly computed gradient (owned) to <paramref name="t"/>: a device-only tensor and a host parameter with a
    /// device mirror accumulate it on the device; a host tensor without a mirror gets it downloaded into its host Grad.
    /// </summary>
    public static void Give(Tensor t, DeviceArray<float>? owned)
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
            var host = DeviceSync.Download(owned.View);
            owned.Dispose();
            Grad.AddOwned(t, host);
        }
    }

    /// <summary>Hands each owned gradient to its tensor, in order (see <see cref="Give(Tensor, DeviceArray{float}?)"/>).</summary>
    public static void Give(params (Tensor Tensor, DeviceArray<float>? Owned)[] grads)
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

        var copy = accelerator.Rent<float>(g.Length);
        copy.View.CopyFrom(g);
        Give(t, copy);
    }
}
