// The two halves of the engine's forward that touch the cache and the base weights:
// Attend writes every row's key and value into its sequence's blocks (layer by layer, in position
// order), then runs causal attention for each sequence's rows over that sequence's positions 0..t;
// BaseProduct is y = x·Wᵀ over any weight storage: the integer 4-bit GEMV for decode rows when
// EngineOptions.IntegerDecode is set; from 5 rows up to BatchGemvRows, BatchGemv (x and W read in place,
// no packing), where the packed GEMM's per-call transpose of the weight is not amortised (1.5–1.7× at
// 16 rows, 1.0–1.2× at 64, one thread: docs/performance.md), unless the step computes in bf16 on a native
// pair kernel that reads the weight's kept bf16 panels (no packing at all, twice the FMA rate: a 64-row
// decode step of the ~125M Llama 1.6× faster than BatchGemv's fp32 on a Zen 4); else the GEMM (its GEMV
// up to 4 rows, the packed GEMM for prompt chunks).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Engine;

internal sealed partial class BatchForward
{
    /// <summary>The most rows a base product runs on <see cref="BatchGemv"/>; larger products use the packed GEMM.</summary>
    private const int BatchGemvRows = 64;

    private Action<int>? attendPart;
    private int[] attendRows = [], attendGroups = [];
    private int attendLayer, attendCount, attendSplits, attendParts;
    private StepBatch? attendBatch;

    private void Attend(int layer, StepBatch batch)
    {
        float scale = 1f / MathF.Sqrt(headDim);
        attendCount = 0;
        if (attendRows.Length < batch.Tokens.Length)
        {
            attendRows = new int[batch.Tokens.Length];
            attendGroups = new int[batch.Tokens.Length];
        }

        for (int s = 0; s < batch.Count; s++)
        {
            var sequence = batch.Sequences[s];
            int start = batch.SequenceStart[s], end = batch.SequenceStart[s + 1], t = end - start;
            for (int i = start; i < end; i++)
            {
                sequence.Write(layer, batch.Positions[i], k.AsSpan(i * kvDim, kvDim), v.AsSpan(i * kvDim, kvDim));
            }

            if (t <= DecodeGemv.MaxRows)
            {
                // Few rows: each attends over the blocks in place (PagedDecodeAttention, below).
                for (int i = start; i < end; i++)
                {
                    attendRows[attendCount] = i;
                    attendGroups[attendCount++] = s;
                }

                continue;
            }

            // A long prompt chunk: its rows are the last t of positions 0..total−1 (the tiled kernel's causal offset).
            int total = batch.Positions[end - 1] + 1;
            Gather(sequence, layer, total);
            Attention.Forward(q.AsSpan(start * qDim, t * qDim), kvScratchK.AsSpan(0, total * kvDim), kvScratchV.AsSpan(0, total * kvDim),
                att.AsSpan(start * qDim, t * qDim), lse.AsSpan(0, heads * t), 1, t, total, heads, kvHeads, headDim, scale, kernel);
        }

        if (attendCount == 0)
        {
            return;
        }

        // Rows × head ranges, split evenly over the threads (a lone row's heads are split; many rows go whole).
        // Short contexts are cheaper on the calling thread than a fork-join (about 64K multiply-adds per part at least).
        int threads = kernel.ResolveThreads();
        long work = 0;
        for (int i = 0; i < attendCount; i++)
        {
            work += (long)(batch.Positions[attendRows[i]] + 1) * qDim * 2;
        }

        threads = (int)Math.Clamp(work / (64 * 1024), 1, threads);
        attendSplits = Math.Max(1, Math.Min(kvHeads, threads / attendCount));
        attendParts = Math.Min(threads, attendCount * attendSplits);
        attendLayer = layer;
        attendBatch = batch;
        attendPart ??= AttendPart;
        CpuParallel.For(attendParts, threads, attendPart);
        attendBatch = null;
    }

    private void AttendPart(int part)
    {
        var batch = attendBatch!;
        var path = kernel.ResolvePath();
        float scale = 1f / MathF.Sqrt(headDim);
        int group = heads / kvHeads;
        var (u0, u1) = CpuParallel.Split(attendCount * attendSplits, attendParts, part);
        for (int unit = u0; unit < u1; unit++)
        {
            int row = attendRows[unit / attendSplits], s = attendGroups[unit / attendSplits];
            var (k0, k1) = CpuParallel.Split(kvHeads, attendSplits, unit % attendSplits);
            var sequence = batch.Sequences[s];
            var pool = sequence.Pool;
            if (pool.CacheType == KvCacheType.BFloat16)
            {
                PagedDecodeAttention.Row(q.AsSpan(row * qDim, qDim), pool.LayerKeysBf16(attendLayer), pool.LayerValuesBf16(attendLayer), sequence.Table, pool.BlockSize,
                    batch.Positions[row] + 1, heads, kvHeads, headDim, k0 * group, k1 * group, scale, att.AsSpan(row * qDim, qDim), path);
                continue;
            }

            PagedDecodeAttention.Row(q.AsSpan(row * qDim, qDim), pool.LayerKeys(attendLayer), pool.LayerValues(attendLayer), sequence.Table, pool.BlockSize,
                batch.Positions[row] + 1, heads, kvHeads, headDim, k0 * group, k1 * group, scale, att.AsSpan(row * qDim, qDim), path);
        }
    }

    /// <summary>Copies positions 0..total−1 of one layer's keys and values into the contiguous scratch (a bf16 cache widened exactly).</summary>
    private void Gather(PagedSequence sequence, int layer, int total)
    {
        var pool = sequence.Pool;
        int blockSize = pool.BlockSize;
        for (int b = 0, done = 0; done < total; b++)
        {
            int count = Math.Min(blockSize, total - done);
            if (pool.CacheType == KvCacheType.BFloat16)
            {
                Widen(pool.KeyBlockBf16(layer, sequence.Table[b])[..(count * kvDim)], kvScratchK.AsSpan(done * kvDim));
                Widen(pool.ValueBlockBf16(layer, sequence.Table[b])[..(count * kvDim)], kvScratchV.AsSpan(done * kvDim));
            }
            else
            {
                sequence.KeyBlock(layer, b)[..(count * kvDim)].CopyTo(kvScratchK.AsSpan(done * kvDim));
                sequence.ValueBlock(layer, b)[..(count * kvDim)].CopyTo(kvScratchV.AsSpan(done * kvDim));
            }

            done += count;
        }
    }

    /// <summary>destination[i] = the fp32 value of the bf16 bits source[i] (exact).</summary>
    private static void Widen(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = Bf16.ToSingle(source[i]);
        }
    }

    /// <summary>y [n, outF] = x [n, inF] · Wᵀ for a weight of any storage (no bias).</summary>
    private void BaseProduct(ReadOnlySpan<float> input, in WeightOperand w, QuantizedWeight? q4, Span<float> y, int n, int inF, int outF)
    {
        if (options.IntegerDecode && n <= 4 && q4 != null && inF % Quant4Int8Gemv.Chunk == 0)
        {
            Quant4Int8Gemv.Forward(input, q4, [], y, n, inF, outF, kernel);
            return;
        }

        if (n > DecodeGemv.MaxRows && n <= BatchGemvRows && !GemmDriver.ReadsKeptBf16Panels(w, outF, kernel))
        {
            BatchGemv.Forward(input, w, y, n, inF, outF, kernel);
            return;
        }

        Gemm.Forward(input, w, [], y, n, inF, outF, kernel);
    }
}
