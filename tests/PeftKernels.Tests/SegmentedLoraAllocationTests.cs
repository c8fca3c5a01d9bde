// SGMV and BGMV on one thread allocate nothing once warm (their scratch is pooled, and the fork-join's
// closure is only created when the work is split over threads): the decode loop calls them per layer.
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

public class SegmentedLoraAllocationTests
{
    [Theory]
    [InlineData(1, 64, 96)]
    [InlineData(7, 256, 200)]
    public void OneThreadAllocatesNothingOnceWarm(int n, int inF, int outF)
    {
        int[] ranks = [8, 3, 16];
        var a = ranks.Select((r, i) => TestUtil.Random(r * inF, 10 + i)).ToArray();
        var b = ranks.Select((r, i) => TestUtil.Random(outF * r, 20 + i)).ToArray();
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
        var x = TestUtil.Random(n * inF, 1);
        var y = new float[n * outF];
        var rows = Enumerable.Range(0, n).Select(i => (i % 4) - 1).ToArray(); // −1 (no adapter), 0, 1, 2, ...
        var scales = Enumerable.Range(0, n).Select(i => 0.5f + i).ToArray();
        int[] starts = [0, n / 2, n];
        int[] segmentAdapters = [2, 0];
        float[] segmentScales = [0.25f, 2f];
        var options = new KernelOptions(1);

        long bgmv = ZeroAllocation.OnThisThread(() => SegmentedLora.Bgmv(x, rows, scales, pack.Adapters, y, n, inF, outF, options));
        long sgmv = ZeroAllocation.OnThisThread(() => SegmentedLora.Sgmv(x, starts, segmentAdapters, segmentScales, pack.Adapters, y, n, inF, outF, options));
        Assert.Equal(0, bgmv);
        Assert.Equal(0, sgmv);
        Assert.All(y, v => Assert.True(float.IsFinite(v)));
    }
}
