using ILGPU;
using ILGPU.Runtime;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// A host tensor's device mirror: a bf16 or fp16 tensor's mirror is its widened copy, never its fp32 Data; RefreshMirror
/// uploads changed host data, and does nothing while the device copy is the newer one.
/// </summary>
[Collection("Gpu")]
public class TensorMirrorTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Fact]
    public void Fp16AndBf16TensorsOnADeviceHaveNoFp32Data()
    {
        foreach (var host in new Tensor[] { new(new[] { (System.Half)1.5f, (System.Half)(-2f) }, 2), new(new ushort[] { 0x3F80, 0xC000 }, 2) })
        {
            var onDevice = host.To(Accel);
            var e = Assert.Throws<InvalidOperationException>(() => onDevice.Data);
            Assert.Contains($"is {host.DType}, not F32", e.Message);
            Assert.Equal(host.ToFloat32(), onDevice.ToFloat32());
            Assert.Equal(host.DType, onDevice.DType);
        }
    }

    [Fact]
    public void RefreshMirrorUploadsHostChangesButNeverOverwritesANewerDeviceCopy()
    {
        var p = new Parameter([1f, 2f, 3f], [3], trainable: true);
        p.MoveTo(Accel);
        p.Data[1] = 20f;
        p.RefreshMirror();
        Assert.Equal([1f, 20f, 3f], p.View(Accel).GetAsArray1D());

        // The optimizer changed the mirror on the device: the host copy is stale, RefreshMirror must not upload it.
        p.View(Accel).CopyFromCPU([7f, 8f, 9f]);
        p.MarkMirrorChanged();
        p.RefreshMirror();
        Assert.Equal([7f, 8f, 9f], p.View(Accel).GetAsArray1D());
        Assert.Equal([7f, 8f, 9f], p.Data);
    }
}
