// Allocation measurements for the decode kernels' "nothing allocated per call once warm" contract.
// A body runs a few times first (JIT tiers, per-thread scratch, cached absmax), then 100 times while
// the allocated bytes are read before and after. Thread-local counts are exact; process-wide counts
// (work on kernel worker threads) also see whatever else the process allocates meanwhile, so their
// tests sit in a collection that xunit runs alone, and the smallest of a few trials is taken: a body
// that allocates per call shows it in every trial.
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Tests that read the process-wide allocation counter run in this collection, never beside other tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ZeroAllocationCollection
{
    public const string Name = "ZeroAllocation";
}

internal static class ZeroAllocation
{
    private const int Warmup = 40;
    private const int Trials = 10;

    /// <summary>Bytes allocated on the calling thread by <paramref name="calls"/> calls of body after warm-up (smallest of a few trials).</summary>
    public static long OnThisThread(Action body, int calls = 100) =>
        Measure(body, calls, GC.GetAllocatedBytesForCurrentThread);

    /// <summary>Bytes allocated in the whole process (every thread) by <paramref name="calls"/> calls of body after warm-up (smallest of a few trials).</summary>
    public static long InProcess(Action body, int calls = 100) =>
        Measure(body, calls, () => GC.GetTotalAllocatedBytes(precise: true));

    private static long Measure(Action body, int calls, Func<long> counter)
    {
        for (int i = 0; i < Warmup; i++)
        {
            body();
        }

        long best = long.MaxValue;
        for (int t = 0; t < Trials && best > 0; t++)
        {
            long before = counter();
            for (int i = 0; i < calls; i++)
            {
                body();
            }

            best = Math.Min(best, counter() - before);
        }

        return best;
    }
}
