// The one summation order of the data-parallel path: destination = v₀, then destination += vᵢ for
// i = 1, 2, … (TensorPrimitives.Add, exact IEEE adds element by element, so the bits depend on the
// order only). The in-process and MPI all-reduces and the one-process shard emulation of Trainer
// all sum through here, which is what makes N ranks and one process give the same bytes.
using System.Numerics.Tensors;

namespace PeftKernels.Distributed;

/// <summary>Rank-order summation of per-rank (or per-shard) vectors.</summary>
public static class RankOrder
{
    /// <summary>Writes ((v₀ + v₁) + v₂) + … of <paramref name="vectors"/> into <paramref name="destination"/> (which may alias v₀).</summary>
    public static void Sum(Span<float> destination, IReadOnlyList<ReadOnlyMemory<float>> vectors)
    {
        ArgumentNullException.ThrowIfNull(vectors);
        if (vectors.Count == 0)
        {
            throw new ArgumentException("no vectors to sum.", nameof(vectors));
        }

        for (int i = 0; i < vectors.Count; i++)
        {
            if (vectors[i].Length != destination.Length)
            {
                throw new ArgumentException($"vector {i} has {vectors[i].Length} elements; the destination has {destination.Length}.", nameof(vectors));
            }
        }

        vectors[0].Span.CopyTo(destination);
        for (int i = 1; i < vectors.Count; i++)
        {
            TensorPrimitives.Add(destination, vectors[i].Span, destination);
        }
    }

    /// <summary>Sums <paramref name="count"/> consecutive vectors of <paramref name="length"/> in <paramref name="gathered"/> in order into <paramref name="destination"/>.</summary>
    public static void SumGathered(Span<float> destination, ReadOnlySpan<float> gathered, int count, int length)
    {
        if (destination.Length != length || gathered.Length < (long)count * length)
        {
            throw new ArgumentException($"{count} vectors of {length} need a gathered buffer of {(long)count * length} and a destination of {length}; got {gathered.Length} and {destination.Length}.");
        }

        gathered[..length].CopyTo(destination);
        for (int i = 1; i < count; i++)
        {
            TensorPrimitives.Add(destination, gathered.Slice(i * length, length), destination);
        }
    }
}
