// The decoder pass with virtual tokens (docs/formats/prompt-learning.md#forward). T real tokens per sequence:
// prompt / P-tuning, no cache or an empty one:
//   x = [R ; embed(ids_b)] per sequence [N+T, H], positions 0..N+T−1 (RoPE on the virtual rows as on any token),
//   the layers run over N+T rows (the cache, if any, then holds N+T positions), the N leading rows are dropped before
//   the final norm so the logits stay [B·T, vocab] and the labels line up as without the adapter.
// prompt / P-tuning, a cache holding P ≥ N positions: a plain step at positions P..P+T−1.
// prefix tuning: no cache: each layer's keys / values get the layer's N prefix rows in front (LlamaAttention.AddPrefix);
//   an empty cache first receives every layer's prefix keys / values in its N first positions (no RoPE); either way
//   the real tokens sit at positions N + (their index), as in PEFT.
using ILGPU.Runtime;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft;

public sealed partial class PromptLearningAdapter
{
    private Tensor? forwardRows;

    /// <summary>Final hidden states [B·T, hidden] of <paramref name="tokens"/> [B·T] with the virtual tokens in front.</summary>
    internal Tensor Hidden(int[] tokens, int batch, KvCache? cache, ForwardContext context)
    {
        int t = tokens.Length / batch, past = cache?.Length ?? 0, n = NumVirtualTokens;
        var c = Model.Config;
        int kvDim = c.NumKeyValueHeads * c.HeadDim;
        if (cache != null && past == 0)
        {
            cache.EnsureUsable(Model.Device, c.NumHiddenLayers, kvDim, n + t);
        }

        // Decode steps over a filled cache need no virtual rows (they sit in the cache already).
        forwardRows = cache == null || past == 0 ? VirtualRows(context) : null;
        try
        {
            if (IsPrefix)
            {
                if (cache != null && past == 0)
                {
                    WritePrefix(cache, forwardRows!);
                    past = n;
                }

                int start = cache == null ? n : past;
                return Model.Model.Forward(tokens, batch, Positions(batch, t, start), cache, context);
            }

            bool prepend = cache == null || past == 0;
            var x = Model.Model.EmbedTokens.Forward(tokens, context);
            int rows = t;
            if (prepend)
            {
                x = Functional.PrependRows(forwardRows!, x, batch);
                rows += n;
            }

            var positions = Positions(batch, rows, past);
            for (int l = 0; l < Model.Model.Layers.Count; l++)
            {
                x = Model.Model.Layers[l].Forward(x, batch, positions, cache, l, context);
            }

            cache?.Advance(rows);
            if (prepend)
            {
                x = Functional.DropLeadingRows(x, batch, n);
            }

            return Model.Model.Norm.Forward(x, context.Kernel);
        }
        finally
        {
            forwardRows = null;
        }
    }

    /// <summary>The virtual rows of the pass in progress (computed once per pass), or freshly computed outside one.</summary>
    internal Tensor CurrentRows(ForwardContext context) => forwardRows ?? VirtualRows(context);

    /// <summary>Positions start, start+1, … for each of <paramref name="batch"/> sequences of <paramref name="rows"/> rows.</summary>
    private static int[] Positions(int batch, int rows, int start)
    {
        var positions = new int[batch * rows];
        for (int i = 0; i < positions.Length; i++)
        {
            positions[i] = start + (i % rows);
        }

        return positions;
    }

    /// <summary>
    /// Writes every layer's prefix keys and values into the N first positions of each sequence of an empty cache: on a GPU device
    /// the windows of the table are copied there by VirtualRowsKernels.Prepend (no new rows: t = 0), without a host round trip.
    /// </summary>
    private void WritePrefix(KvCache cache, Tensor rows)
    {
        int n = NumVirtualTokens, width = RowWidth, kvDim = KvDim;
        var device = cache.Device;
        float[]? table = device.IsGpu ? null : rows.Data;
        for (int l = 0; l < cache.Layers; l++)
        {
            int keyColumn = 2 * l * kvDim, valueColumn = ((2 * l) + 1) * kvDim;
            var keys = table == null ? null : LayerRows(table, n, width, keyColumn, kvDim);
            var values = table == null ? null : LayerRows(table, n, width, valueColumn, kvDim);
            for (int b = 0; b < cache.Batch; b++)
            {
                if (table == null)
                {
                    long row = (long)b * cache.Capacity * kvDim;
                    var accelerator = device.Accelerator;
                    VirtualRowsKernels.Prepend(accelerator, rows.View(device), default, cache.DeviceKeys(l).SubView(row, (long)n * kvDim), 1, n, 0, width, keyColumn, kvDim);
                    VirtualRowsKernels.Prepend(accelerator, rows.View(device), default, cache.DeviceValues(l).SubView(row, (long)n * kvDim), 1, n, 0, width, valueColumn, kvDim);
                }
                else
                {
                    keys!.CopyTo(cache.Keys(l, b), 0);
                    values!.CopyTo(cache.Values(l, b), 0);
                }
            }
        }

        cache.Advance(n);
    }

    /// <summary>The [n, d] block of columns column..column+d of a [n, width] table.</summary>
    internal static float[] LayerRows(float[] table, int n, int width, int column, int d)
    {
        var rows = new float[n * d];
        for (int r = 0; r < n; r++)
        {
            table.AsSpan((r * width) + column, d).CopyTo(rows.AsSpan(r * d, d));
        }

        return rows;
    }

    /// <summary>
    /// The keys and values [N, kvDim] per layer of the virtual positions of a prompt-learning table <paramref name="rows"/> [N, W] on
    /// <paramref name="model"/>: prefix tuning reads them from the table (no RoPE); prompt / P-tuning run the decoder over the N rows at
    /// positions 0..N−1 into a cache (keys rotated there), exactly what a cached forward with the adapter attached stores.
    /// </summary>
    internal static (float[][] Keys, float[][] Values) VirtualKeyValues(LlamaForCausalLM model, PromptLearningConfig config, float[] rows)
    {
        var c = model.Config;
        int n = config.NumVirtualTokens, layers = c.NumHiddenLayers, kvDim = c.NumKeyValueHeads * c.HeadDim;
        var keys = new float[layers][];
        var values = new float[layers][];
        if (config.Type == PromptLearningConfig.PrefixTuningType)
        {
            for (int l = 0; l < layers; l++)
            {
                keys[l] = LayerRows(rows, n, 2 * layers * kvDim, 2 * l * kvDim, kvDim);
                values[l] = LayerRows(rows, n, 2 * layers * kvDim, ((2 * l) + 1) * kvDim, kvDim);
            }

            return (keys, values);
        }

        using var scope = Autograd.Tape.NoGrad();
        using var cache = new KvCache(layers, 1, n, kvDim);
        Tensor x = new(rows, n, c.HiddenSize);
        var positions = Positions(1, n, 0);
        for (int l = 0; l < layers; l++)
        {
            x = model.Model.Layers[l].Forward(x, 1, positions, cache, l, ForwardContext.Default);
            keys[l] = cache.Keys(l, 0).AsSpan(0, n * kvDim).ToArray();
            values[l] = cache.Values(l, 0).AsSpan(0, n * kvDim).ToArray();
        }

        return (keys, values);
    }
}
