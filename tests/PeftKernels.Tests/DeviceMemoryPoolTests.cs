using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The caching allocator and the counted waits (kernels/PeftKernels.Kernels.Gpu/DeviceMemoryPool.cs, DeviceSync.cs) and
/// DeviceScope, on the shared ILGPU CPU accelerator. Counters are per accelerator and the Gpu collection runs one class at
/// a time, so differences of snapshots taken here see only this test's requests.
/// </summary>
[Collection("Gpu")]
public class DeviceMemoryPoolTests(GpuFixture gpu)
{
    private DeviceMemoryPool Pool => DeviceMemoryPool.Of(gpu.Accelerator);

    [Theory]
    [InlineData(0, 0)]
    [InlineData(1, 512)]
    [InlineData(512, 512)]
    [InlineData(513, 1024)]
    [InlineData(1 << 20, 1 << 20)]
    [InlineData((1 << 20) + 1, (1 << 20) + (1 << 18))]
    [InlineData(3_000_000, 3_145_728)] // 2 MiB · 1.5
    [InlineData(1L << 33, 1L << 33)]
    public void SizeClassesRoundUpByAtMostAQuarter(long bytes, long expected)
    {
        long size = DeviceMemoryPool.SizeClass(bytes);
        Assert.Equal(expected, size);
        Assert.True(size >= bytes && (bytes <= DeviceMemoryPool.SmallLimit || size <= bytes * 1.25 + 1), $"{bytes} → {size}");
    }

    [Fact]
    public void AReturnedBlockServesTheNextRequestOfItsClass()
    {
        var before = Pool.Stats;
        var a = Pool.Rent<float>(1000); // 4000 bytes → class 4096
        Assert.Equal(1000, a.Length);
        Assert.Equal(1000, a.View.Length);
        a.Dispose();
        using var b = Pool.Rent<int>(1020); // 4080 bytes → the same class
        var after = Pool.Stats;
        Assert.True(after.Hits - before.Hits >= 1, "the second request of the class must be a hit");
        Assert.Equal(1, after.Returns - before.Returns);
        Assert.True(after.BytesInUse - before.BytesInUse == 4096, $"in use grew by {after.BytesInUse - before.BytesInUse}");
        Assert.Throws<ObjectDisposedException>(() => a.View);
        a.Dispose(); // a second dispose hands nothing back
        Assert.Equal(after.Returns, Pool.Stats.Returns);
    }

    [Fact]
    public void TrimFreesOnlyCachedBlocks()
    {
        using var kept = Pool.Rent<float>(300_001);
        Pool.Rent<float>(700_003).Dispose();
        Assert.True(Pool.Stats.BytesCached > 0);
        long freed = Pool.Trim();
        Assert.True(freed > 0);
        var stats = Pool.Stats;
        Assert.Equal(0, stats.BytesCached);
        Assert.True(stats.BytesInUse >= DeviceMemoryPool.SizeClass(300_001L * 4));
        Assert.Equal(stats.BytesInUse, stats.BytesReserved);
    }

    [Fact]
    public void AnArrayNobodyDisposedComesBackWhenCollected()
    {
        long returns = Pool.Stats.Returns;
        Lose();
        for (int i = 0; i < 5 && Pool.Stats.Returns == returns; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Assert.True(Pool.Stats.Returns > returns, "the finalizer hands the block back");

        void Lose() => _ = Pool.Rent<float>(77);
    }

    [Fact]
    public void DownloadsAreCountedAndUploadsDoNotWait()
    {
        var values = Enumerable.Range(0, 37).Select(i => i * 0.5f).ToArray();
        long waits = DeviceSync.Count(gpu.Accelerator);
        using var array = Pool.Upload<float>(values);
        Assert.Equal(waits, DeviceSync.Count(gpu.Accelerator));
        Assert.Equal(values, DeviceSync.Download(array.View));
        Assert.Equal(waits + 1, DeviceSync.Count(gpu.Accelerator));
        var shortDestination = new float[5];
        Assert.Contains("destination has 5 elements", Assert.Throws<ArgumentException>(() => DeviceSync.Download(array.View, shortDestination)).Message);
    }

    [Fact]
    public void ADeviceScopeHandsItsTensorsBackAndKeepSavesOne()
    {
        var device = Device.FromAccelerator(gpu.Accelerator);
        var x = new Tensor([1f, -2f, 3f, 4f], 2, 2).To(device);
        Tensor inside, kept, read;
        long inUse = Pool.Stats.BytesInUse;
        using (var scope = DeviceScope.Begin())
        {
            inside = Functional.Add(x, x);
            kept = scope.Keep(Functional.Add(inside, x));
            read = Functional.Add(x, inside);
            Assert.Equal([3f, -6f, 9f, 12f], read.Data);
            Assert.Equal(2, scope.Count);
        }

        Assert.Equal([3f, -6f, 9f, 12f], read.Data); // downloaded inside: the host copy stays
        Assert.Equal([3f, -6f, 9f, 12f], kept.Data);
        var error = Assert.Throws<InvalidOperationException>(() => inside.Data);
        Assert.Contains("DeviceScope", error.Message);
        Assert.Contains("scope.Keep", error.Message);
        Assert.True(Pool.Stats.BytesInUse - inUse <= DeviceMemoryPool.SizeClass(16), "only the kept tensor still holds a block");
    }

    [Fact]
    public void ScopesEndInnermostFirst()
    {
        var outer = DeviceScope.Begin();
        var inner = DeviceScope.Begin();
        Assert.Throws<InvalidOperationException>(outer.Dispose);
        inner.Dispose();
        outer.Dispose();
    }
}
