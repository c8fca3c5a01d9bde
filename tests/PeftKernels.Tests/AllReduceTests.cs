using PeftKernels.Distributed;
using Xunit;

namespace PeftKernels.Tests;

public class AllReduceTests
{
    private static float[] Values(int rank, int length) =>
        [.. Enumerable.Range(0, length).Select(i => (float)(Math.Sin((rank * 7919) + (i * 0.37)) * Math.Pow(10, (i % 9) - 4)))];

    /// <summary>Runs <paramref name="body"/> on one thread per rank and rethrows the first failure.</summary>
    internal static void OnRanks(IAllReduce[] group, Action<IAllReduce> body)
    {
        var threads = group.Select(g => Task.Factory.StartNew(() => body(g), TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(threads);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void InProcessSumIsTheRankOrderSumBitForBitOnEveryRank(int size)
    {
        const int length = 1031;
        var expected = new float[length];
        RankOrder.Sum(expected, [.. Enumerable.Range(0, size).Select(r => (ReadOnlyMemory<float>)Values(r, length))]);
        var manual = Values(0, length);
        for (int r = 1; r < size; r++)
        {
            var v = Values(r, length);
            for (int i = 0; i < length; i++)
            {
                manual[i] += v[i];
            }
        }

        Assert.Equal(manual, expected);
        var results = new float[size][];
        var asyncResults = new float[size][];
        var group = InProcessAllReduce.CreateGroup(size, TimeSpan.FromSeconds(30));
        OnRanks(group, g =>
        {
            Assert.Equal(size, g.Size);
            var mine = Values(g.Rank, length);
            g.AllReduceSum(mine);
            results[g.Rank] = mine;

            // Two operations in flight at once complete in the order they were started, on halves of one buffer.
            var both = Values(g.Rank, length);
            var first = g.AllReduceSumAsync(both.AsMemory(0, 500));
            var second = g.AllReduceSumAsync(both.AsMemory(500));
            g.Wait(second);
            g.Wait(first);
            asyncResults[g.Rank] = both;
            g.Barrier();
            g.Dispose();
        });

        for (int r = 0; r < size; r++)
        {
            Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), results[r].Select(BitConverter.SingleToInt32Bits));
            Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), asyncResults[r].Select(BitConverter.SingleToInt32Bits));
        }
    }

    [Fact]
    public void ARankThatNeverComesMakesThePeerFailWithATimeoutInsteadOfHanging()
    {
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromMilliseconds(300));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<CommunicationException>(() => group[0].AllReduceSum(new float[4]));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"the timeout took {clock.Elapsed}");
        Assert.Contains("rank 0 of 2", e.Message);
        Assert.Contains("peer", e.Message);

        // The communicator is broken from then on: the next call fails at once, naming the first failure.
        var again = Assert.Throws<CommunicationException>(() => group[0].Barrier());
        Assert.Contains("failed earlier", again.Message);
    }

    [Fact]
    public void RanksThatReduceDifferentLengthsAreRefused()
    {
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromSeconds(30));
        var errors = new Exception?[2];
        OnRanks(group, g =>
        {
            try
            {
                g.AllReduceSum(new float[g.Rank == 0 ? 3 : 5]);
            }
            catch (CommunicationException e)
            {
                errors[g.Rank] = e;
            }
        });

        Assert.All(errors, e => Assert.Contains("same lengths", e!.Message));
    }

    [Fact]
    public void InvalidGroupsAreRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => InProcessAllReduce.CreateGroup(0, TimeSpan.FromSeconds(1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => InProcessAllReduce.CreateGroup(2, TimeSpan.Zero));
    }
}
