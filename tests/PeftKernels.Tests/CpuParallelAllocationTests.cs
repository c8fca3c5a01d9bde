// CpuParallel.For reuses one completion counter under its gate: a fork-join over a cached delegate
// allocates nothing on the caller nor on the workers (the decode loop runs several per token). Before
// the reuse every call allocated a CountdownEvent (and its wait handle).
using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

[Collection(ZeroAllocationCollection.Name)]
public class CpuParallelAllocationTests
{
    private static readonly int[] Hits = new int[4];

    private static readonly Action<int> Body = t => Interlocked.Increment(ref Hits[t]);

    [Theory]
    [InlineData(2, 2)]
    [InlineData(3, 4)]
    [InlineData(1, 2)]
    [InlineData(4, 1)]
    public void ForkJoinWithCachedDelegateAllocatesNothing(int items, int threads)
    {
        Array.Clear(Hits);
        long bytes = ZeroAllocation.InProcess(() => CpuParallel.For(items, threads, Body));
        Assert.Equal(0, bytes);

        // Every item ran once per call: 40 warm-up calls, then 100 per trial (one or more).
        int calls = Hits[0];
        Assert.True(calls >= 140, $"item 0 ran {calls} times");
        for (int t = 0; t < items; t++)
        {
            Assert.Equal(calls, Hits[t]);
        }
    }

    [Fact]
    public void ReusedCounterStillJoinsEveryItemAndRethrows()
    {
        // A thrown item is reported after the join, and the next call (same counter, reset) still waits for all its items.
        var error = Assert.Throws<InvalidOperationException>(() => CpuParallel.For(2, 2, t =>
        {
            if (t == 1)
            {
                throw new InvalidOperationException("item 1");
            }
        }));
        Assert.Equal("item 1", error.Message);
        for (int round = 0; round < 50; round++)
        {
            int done = 0;
            CpuParallel.For(3, 3, t =>
            {
                Thread.SpinWait(200 * t);
                Interlocked.Increment(ref done);
            });
            Assert.Equal(3, done);
        }
    }
}
