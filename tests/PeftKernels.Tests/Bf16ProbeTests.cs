using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Native;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>MachineProbe's bf16 peak: measured on the native instruction bf16 compute picks, or NaN with the reason.</summary>
public class Bf16ProbeTests
{
    [Fact]
    public void Bf16PeakMeasuresTheKernelBf16ComputePicks()
    {
        var peak = MachineProbe.Bf16PeakGflops(1, steps: 200_000, repeats: 1);
        var picked = GemmDriver.ResolveBf16(Bf16Kernel.Auto, KernelOptions.Best);
        Assert.Equal(picked, peak.Kernel);
        if (picked == Bf16Kernel.Managed)
        {
            Assert.True(double.IsNaN(peak.Gflops));
            Assert.Contains(NativeBf16.AvxStatus, peak.Detail);
        }
        else
        {
            Assert.True(peak.Gflops > 0 && double.IsFinite(peak.Gflops), $"{peak}");
            Assert.Contains(picked == Bf16Kernel.Amx ? "tdpbf16ps" : "vdpbf16ps", peak.Detail);
        }
    }

    [Avx512Bf16Fact]
    public void NativePeakLoopReturnsItsSum()
    {
        // 24 chains × 100 steps × 16 lanes × 2 products of 1.0 · 2⁻⁵⁵ (bf16 0x2400): the loop ran all its steps.
        float sum = MachineProbe.Bf16PeakSum(100);
        Assert.Equal(24 * 100 * 16 * 2 * Math.Pow(2, -55), sum, 1e-20);
    }
}
