// Ranks as threads of one process (tests, and data-parallel runs without MPI): the group shares one
// slot per rank. AllReduceSum: each rank copies its values into its slot; barrier; each rank sums
// the slots in rank order (RankOrder.Sum) into its own values; barrier (so no slot is overwritten
// by the next operation while a peer still reads it). The barrier waits at most the timeout, so a
// rank whose thread died makes the others fail with CommunicationException instead of hanging.
using System.Globalization;

namespace PeftKernels.Distributed;

/// <summary>An all-reduce among threads of one process (one instance per rank, from <see cref="CreateGroup"/>).</summary>
public sealed class InProcessAllReduce : IAllReduce
{
    private readonly Group group;
    private readonly CommThread comm;

    private InProcessAllReduce(Group group, int rank, TimeSpan timeout)
    {
        this.group = group;
        Rank = rank;
        comm = new CommThread(string.Create(CultureInfo.InvariantCulture, $"rank {rank} of {group.Size} (in-process)"), timeout);
    }

    /// <inheritdoc/>
    public int Rank { get; }

    /// <inheritdoc/>
    public int Size => group.Size;

    /// <inheritdoc/>
    public TimeSpan Timeout => comm.Timeout;

    /// <summary>Creates the <paramref name="size"/> ranks of a group, index = rank; give each to its own thread.</summary>
    public static IAllReduce[] CreateGroup(int size, TimeSpan timeout)
    {
        if (size <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(size), $"a group needs at least one rank; got {size}.");
        }

        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), $"the timeout must be positive; got {timeout}.");
        }

        var group = new Group(size);
        return [.. Enumerable.Range(0, size).Select(r => (IAllReduce)new InProcessAllReduce(group, r, timeout))];
    }

    /// <inheritdoc/>
    public void AllReduceSum(Span<float> values)
    {
        var copy = values.ToArray();
        comm.Run("all-reduce", () => Reduce(copy));
        copy.CopyTo(values);
    }

    /// <inheritdoc/>
    public Task AllReduceSumAsync(Memory<float> values) => comm.Start("all-reduce", () => Reduce(values));

    /// <inheritdoc/>
    public void Wait(Task operation) => comm.Wait(operation, "all-reduce");

    /// <inheritdoc/>
    public void Barrier() => comm.Run("barrier", () => Meet("barrier"));

    /// <inheritdoc/>
    public void Dispose() => comm.Dispose();

    private void Reduce(Memory<float> values)
    {
        var mine = group.Slots[Rank];
        if (mine.Length != values.Length)
        {
            group.Slots[Rank] = mine = new float[values.Length];
        }

        values.Span.CopyTo(mine);
        Meet("all-reduce");
        var slots = group.Slots;
        for (int r = 0; r < Size; r++)
        {
            if (slots[r].Length != values.Length)
            {
                throw new CommunicationException($"rank {r} gave {slots[r].Length} values to the all-reduce; rank {Rank} gave {values.Length}: every rank must reduce the same lengths in the same order.");
            }
        }

        RankOrder.Sum(values.Span, [.. slots.Select(s => (ReadOnlyMemory<float>)s)]);
        Meet("all-reduce");
    }

    private void Meet(string what)
    {
        if (!group.Barrier.SignalAndWait(Timeout))
        {
            throw new CommunicationException(string.Create(CultureInfo.InvariantCulture,
                $"{what} waited {Timeout.TotalSeconds:0.#} s for the other ranks: a peer stopped or is stuck"));
        }
    }

    private sealed class Group(int size)
    {
        public int Size { get; } = size;

        public float[][] Slots { get; } = [.. Enumerable.Range(0, size).Select(_ => Array.Empty<float>())];

        public Barrier Barrier { get; } = new(size);
    }
}
