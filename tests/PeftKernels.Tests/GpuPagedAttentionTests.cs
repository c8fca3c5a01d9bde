// The paged-attention kernels on the device (the shared ILGPU CPU accelerator) against the CPU: sequences
// whose blocks interleave in the pool (round-robin appends), last blocks partly filled or full, odd head
// sizes, GQA and MQA. Write puts every position's K/V into its block through the block tables (slots it
// is not given keep their NaN poison); Forward's causal rows (the last few positions of each sequence, a
// prompt chunk) equal a double-precision softmax over the sequence's positions 0..p read from the host
// pool, and each sequence's last row equals the CPU PagedAttention.Decode.
using PeftKernels.Engine;
using PeftKernels.Kernels.Gpu;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public sealed class GpuPagedAttentionTests(GpuFixture gpu)
{
    [Theory]
    [InlineData(4, 2, 17, 3)]
    [InlineData(6, 3, 33, 5)]
    [InlineData(8, 1, 5, 4)]
    [InlineData(2, 2, 128, 2)]
    public void WriteThenForwardMatchTheCpuPagedAttention(int heads, int kvHeads, int headDim, int blockSize)
    {
        int kvDim = kvHeads * headDim, qDim = heads * headDim;
        const int blocks = 40;
        var pool = new KvBlockPool(1, kvHeads, headDim, blockSize, blocks);
        int[] lengths = [1, 7, 2 * blockSize, 11];
        var sequences = lengths.Select(_ => pool.CreateSequence()).ToArray();
        var rng = new Random((heads * 1000) + headDim);
        float[] Random(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2) - 1))];

        // Round-robin appends: a sequence's blocks are not contiguous in the pool.
        var rows = new List<(int Sequence, int Position)>();
        var keys = new List<float>();
        var values = new List<float>();
        for (int p = 0; p < lengths.Max(); p++)
        {
            for (int s = 0; s < sequences.Length; s++)
            {
                if (p < lengths[s])
                {
                    sequences[s].Append(p);
                    var (key, value) = (Random(kvDim), Random(kvDim));
                    sequences[s].Write(0, p, key, value);
                    rows.Add((s, p));
                    keys.AddRange(key);
                    values.AddRange(value);
                }
            }
        }

        int[] tableStarts = new int[sequences.Length];
        var tables = new List<int>();
        for (int s = 0; s < sequences.Length; s++)
        {
            tableStarts[s] = tables.Count;
            tables.AddRange(sequences[s].BlockTable);
        }

        using var tablesBuffer = gpu.Upload(tables.ToArray());
        using var keyCache = gpu.Poisoned((long)blocks * blockSize * kvDim);
        using var valueCache = gpu.Poisoned((long)blocks * blockSize * kvDim);
        using (var kBuffer = gpu.Upload(keys.ToArray()))
        using (var vBuffer = gpu.Upload(values.ToArray()))
        using (var positions = gpu.Upload(rows.Select(r => r.Position).ToArray()))
        using (var rowTables = gpu.Upload(rows.Select(r => tableStarts[r.Sequence]).ToArray()))
        {
            PagedAttentionKernels.Write(gpu.Accelerator, kBuffer.View, vBuffer.View, positions.View, rowTables.View, tablesBuffer.View,
                keyCache.View, valueCache.View, rows.Count, kvDim, blockSize);
            var writtenKeys = gpu.Download(keyCache.View);
            var hostKeys = pool.LayerKeys(0);
            var used = sequences.SelectMany((s, i) => s.BlockTable.SelectMany((b, j) => Enumerable.Range(0, s.TokensInBlock(j)).Select(slot => (b * blockSize) + slot))).ToHashSet();
            for (int row = 0; row < blocks * blockSize; row++)
            {
                for (int e = 0; e < kvDim; e++)
                {
                    float value = writtenKeys[(row * kvDim) + e];
                    Assert.True(used.Contains(row) ? value == hostKeys[(row * kvDim) + e] : float.IsNaN(value), $"cache row {row} element {e}: {value}");
                }
            }
        }

        // Query rows: the last three positions of each sequence (fewer when shorter), as a prompt chunk.
        var queries = sequences.SelectMany((s, i) => Enumerable.Range(Math.Max(0, lengths[i] - 3), Math.Min(3, lengths[i])).Select(p => (Sequence: i, Position: p))).ToList();
        var q = Random(queries.Count * qDim);
        float scale = 1f / MathF.Sqrt(headDim);
        using var qBuffer = gpu.Upload(q);
        using var o = gpu.Poisoned(q.Length);
        using var queryPositions = gpu.Upload(queries.Select(r => r.Position).ToArray());
        using var queryTables = gpu.Upload(queries.Select(r => tableStarts[r.Sequence]).ToArray());
        PagedAttentionKernels.Forward(gpu.Accelerator, qBuffer.View, keyCache.View, valueCache.View, queryPositions.View, queryTables.View, tablesBuffer.View,
            o.View, queries.Count, heads, kvHeads, headDim, blockSize, scale);
        var got = gpu.Download(o.View);
        for (int r = 0; r < queries.Count; r++)
        {
            var (s, p) = queries[r];
            var expected = Reference(q.AsSpan(r * qDim, qDim), sequences[s], p, heads, kvHeads, headDim, scale);
            TestUtil.AssertClose(got.AsSpan(r * qDim, qDim), expected, 1e-5, 1e-4, $"row {r} (sequence {s}, position {p})");
            if (p == lengths[s] - 1)
            {
                var decode = new float[qDim];
                PagedAttention.Decode(q.AsSpan(r * qDim, qDim), sequences[s], 0, decode, heads, scale);
                TestUtil.AssertClose(got.AsSpan(r * qDim, qDim), decode, 1e-5, 1e-4, $"row {r} against PagedAttention.Decode");
            }
        }
    }

    [Fact]
    public void BadShapesAreRefusedWithTheirNames()
    {
        using var cache = gpu.Upload(new float[4 * 2 * 8]);
        using var ints = gpu.Upload(new int[2]);
        using var q = gpu.Upload(new float[2 * 4 * 8]);
        var e = Assert.Throws<ArgumentException>(() => PagedAttentionKernels.Forward(gpu.Accelerator, q.View, cache.View, cache.View, ints.View, ints.View, ints.View,
            q.View, 2, 4, 3, 8, 2, 1f));
        Assert.Contains("kvHeads", e.Message);
        e = Assert.Throws<ArgumentException>(() => PagedAttentionKernels.Forward(gpu.Accelerator, q.View, cache.View, cache.View, ints.View, ints.View, ints.View,
            q.View, 2, 4, 1, 8, 3, 1f));
        Assert.Contains("keyCache", e.Message);
    }

    /// <summary>softmax(scale·q·Kᵀ)·V over positions 0..p in double, reading the host pool row by row.</summary>
    private static float[] Reference(ReadOnlySpan<float> q, PagedSequence sequence, int p, int heads, int kvHeads, int headDim, float scale)
    {
        var o = new float[heads * headDim];
        for (int h = 0; h < heads; h++)
        {
            int g = h / (heads / kvHeads);
            var scores = new double[p + 1];
            for (int j = 0; j <= p; j++)
            {
                var key = sequence.KeyAt(0, j).Slice(g * headDim, headDim);
                double dot = 0;
                for (int e = 0; e < headDim; e++)
                {
                    dot += q[(h * headDim) + e] * key[e];
                }

                scores[j] = scale * dot;
            }

            double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
            for (int e = 0; e < headDim; e++)
            {
                double acc = 0;
                for (int j = 0; j <= p; j++)
                {
                    acc += Math.Exp(scores[j] - max) / sum * sequence.ValueAt(0, j)[(g * headDim) + e];
                }

                o[(h * headDim) + e] = (float)acc;
            }
        }

        return o;
    }
}
