using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class MachineProbeTests
{
    [Fact]
    public void ReadBufferPassesReportAFiniteRateAndRefuseBadUse()
    {
        var buffer = new MachineProbe.ReadBuffer((1 << 20) + 100); // rounded down to whole 256-byte steps
        Assert.Equal(1 << 20, buffer.Bytes);
        foreach (int threads in new[] { 1, 2 })
        {
            double gbs = buffer.Pass(threads);
            Assert.True(double.IsFinite(gbs) && gbs > 0, $"{threads} thread(s): {gbs} GB/s");
        }

        buffer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => buffer.Pass(1));
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new MachineProbe.ReadBuffer(100));
        Assert.Equal("bytes", ex.ParamName);
    }

    [Fact]
    public void ReadBandwidthGivesAFiniteRate()
    {
        double gbs = MachineProbe.ReadBandwidthGBs(2, 1 << 20, repeats: 2);
        Assert.True(double.IsFinite(gbs) && gbs > 0, $"{gbs} GB/s");
    }
}
