// A communicator of data-parallel training: Size ranks (processes, or threads in tests), each with
// a Rank in [0, Size). AllReduceSum leaves on every rank the sum of every rank's values, added in
// rank order — ((x₀ + x₁) + x₂) + … — so the result is the same bits on every rank, on every run, and
// equal to what one process computes when it sums the same per-rank vectors in the same order
// (RankOrder.Sum). Every rank must issue the same operations, with the same lengths, in the same
// order. Every wait is bounded by Timeout: a peer that died or hangs gives a CommunicationException
// naming the operation, instead of a hang.
namespace PeftKernels.Distributed;

/// <summary>A group of ranks that sum float vectors in rank order and synchronize (data-parallel training).</summary>
public interface IAllReduce : IDisposable
{
    /// <summary>This rank, in [0, <see cref="Size"/>).</summary>
    int Rank { get; }

    /// <summary>Ranks in the group.</summary>
    int Size { get; }

    /// <summary>The longest any operation may wait for the peers before it fails with <see cref="CommunicationException"/>.</summary>
    TimeSpan Timeout { get; }

    /// <summary>Replaces <paramref name="values"/> on every rank by the rank-order sum of every rank's values (blocking).</summary>
    void AllReduceSum(Span<float> values);

    /// <summary>
    /// Starts the rank-order sum of <paramref name="values"/> in place; operations run one after another in the order they were
    /// started. The memory must not be touched until <see cref="Wait"/> returns for the task.
    /// </summary>
    Task AllReduceSumAsync(Memory<float> values);

    /// <summary>Waits for an operation started by <see cref="AllReduceSumAsync"/>, at most <see cref="Timeout"/>.</summary>
    void Wait(Task operation);

    /// <summary>Returns when every rank has called it (or fails after <see cref="Timeout"/>).</summary>
    void Barrier();
}
