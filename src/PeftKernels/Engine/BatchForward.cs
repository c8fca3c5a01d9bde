// The engine's forward pass: one step of a continuous batch. Rows from many sequences (prompt chunks
// and decode tokens, each sequence's rows contiguous, each sequence with its own adapter or none) go
// through the Llama decoder together; keys and values go to each sequence's paged KV blocks; logits
// come out for the last row of the sequences that need them. Per layer (docs/formats/llama-checkpoints.md#forward):
//   n   = rmsnorm(x)·w_in                          rows [R, hidden]
//   q, k, v = proj(n)  (with each row's adapter)   RoPE on q and k at each row's position
//   K/V of every row written to its sequence's blocks, then for row i of sequence s at position t:
//   o_i = softmax(q_i·K_s[0..t]ᵀ/√d)·V_s[0..t]     (causal: a prompt chunk's rows see their own earlier rows)
//   x  += o_proj(o);   n = rmsnorm(x)·w_post;   x += down(silu(gate(n)) ⊙ up(n))
//   (rows of a MixLoRA sequence: x += MixLoraBlock_l(n) instead; BatchForward.MixLora.cs)
// and logits = lm_head(rmsnorm(x_last)·w_norm) for the rows that want them.
// Every projection is the base product for all rows at once (one GEMM, or a GEMV at ≤ 4 rows) plus
// the rows' adapters (EngineAdapter's equations): one BGMV over the rows (each row's adapter: its
// sequence's; the kernel groups rows by adapter), DoRA's column scale, lora bias and IA³ per sequence.
// The result of a row does not depend on what else is in the batch beyond fp32 rounding of the GEMM's
// blocking (tests compare with the model run one sequence at a time).
// All buffers are sized at construction for the step's maximum rows and sequences.
using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;

namespace PeftKernels.Engine;

/// <summary>The batched forward of one engine step over a paged KV cache, on the CPU.</summary>
internal sealed partial class BatchForward
{
    private readonly LlamaConfig config;
    private readonly WeightOperand[,] weights;
    private readonly QuantizedWeight?[,] quantized;
    private readonly QuantizedWeight? lmHeadQuantized;
    private readonly float[]?[,] biases;
    private readonly float[][] inputNorms;
    private readonly float[][] postNorms;
    private readonly float[] finalNorm;
    private readonly Tensor embedding;
    private readonly WeightOperand lmHead;
    private readonly float[] invFreq;
    private readonly (int In, int Out)[] shapes;
    private readonly float eps;
    private readonly int hidden, qDim, kvDim, inter, heads, kvHeads, headDim, vocab;
    private readonly EngineOptions options;
    private readonly KernelOptions kernel;
    private readonly float[] x, xn, q, k, v, att, gate, up, rstd, inputScratch, kvScratchK, kvScratchV, lse, logitsIn, logits;
    private readonly int[] rowAdapters;
    private readonly float[] rowScales;

    public BatchForward(LlamaForCausalLM model, int maxRows, int maxSequences, int maxLength, EngineOptions options)
    {
        config = model.Config;
        this.options = options;
        kernel = options.Kernel;
        hidden = config.HiddenSize;
        heads = config.NumAttentionHeads;
        kvHeads = config.NumKeyValueHeads;
        headDim = config.HeadDim;
        qDim = heads * headDim;
        kvDim = kvHeads * headDim;
        inter = config.IntermediateSize;
        vocab = config.VocabSize;
        eps = (float)config.RmsNormEps;
        int layers = config.NumHiddenLayers;
        shapes = [(hidden, qDim), (hidden, kvDim), (hidden, kvDim), (qDim, hidden), (hidden, inter), (hidden, inter), (inter, hidden)];
        weights = new WeightOperand[layers, Projections.Count];
        biases = new float[]?[layers, Projections.Count];
        quantized = new QuantizedWeight?[layers, Projections.Count];
        inputNorms = new float[layers][];
        postNorms = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            var layer = model.Model.Layers[l];
            inputNorms[l] = layer.InputLayerNorm.Weight.Data;
            postNorms[l] = layer.PostAttentionLayerNorm.Weight.Data;
            for (int p = 0; p < Projections.Count; p++)
            {
                var linear = Projections.Of(layer, p);
                weights[l, p] = linear.Weight.AsWeight();
                quantized[l, p] = linear.Weight.DType == TensorDType.Q4 ? linear.Weight.Quantized : null;
                biases[l, p] = linear.Bias?.Data;
            }
        }

        finalNorm = model.Model.Norm.Weight.Data;
        embedding = model.Model.EmbedTokens.Weight;
        lmHead = model.LmHead.Weight.AsWeight();
        lmHeadQuantized = model.LmHead.Weight.DType == TensorDType.Q4 ? model.LmHead.Weight.Quantized : null;
        if (model.LmHead.Bias != null)
        {
            throw new NotSupportedException("the engine serves lm_head without a bias (Llama-family models have none).");
        }

        invFreq = model.Model.Layers[0].SelfAttn.InvFreq;
        x = new float[maxRows * hidden];
        xn = new float[maxRows * hidden];
        q = new float[maxRows * qDim];
        k = new float[maxRows * kvDim];
        v = new float[maxRows * kvDim];
        att = new float[maxRows * qDim];
        gate = new float[maxRows * inter];
        up = new float[maxRows * inter];
        rstd = new float[maxRows];
        inputScratch = new float[maxRows * Math.Max(Math.Max(hidden, qDim), inter)];
        kvScratchK = new float[(long)maxLength * kvDim];
        kvScratchV = new float[(long)maxLength * kvDim];
        lse = new float[maxRows * heads];
        logitsIn = new float[maxSequences * hidden];
        logits = new float[(long)maxSequences * vocab];
        rowAdapters = new int[maxRows];
        rowScales = new float[maxRows];
    }

    /// <summary>(in, out) of each projection.</summary>
    public (int In, int Out)[] Shapes => shapes;

    /// <summary>Runs the step; returns logits [batch.LogitRows, vocab] (valid until the next call).</summary>
    public ReadOnlySpan<float> Run(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        if (n <= DecodeGemv.MaxRows)
        {
            return RunDecode(batch, table);
        }

        Layers(batch, table);
        int m = batch.LogitRows;
        if (m == 0)
        {
            return [];
        }

        GatherLogitRows(batch);
        var rows = logitsIn.AsSpan(0, m * hidden);
        RmsNorm.Forward(rows, finalNorm, eps, rows, rstd.AsSpan(0, m), m, hidden, kernel);
        var output = logits.AsSpan(0, m * vocab);
        BaseProduct(rows, lmHead, lmHeadQuantized, output, m, hidden, vocab);
        return output;
    }

    /// <summary>Embeds the batch's rows into x and runs every decoder layer over them (the general path, any row count).</summary>
    private void Layers(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        Embed(batch.Tokens.AsSpan(0, n), x.AsSpan(0, n * hidden));
        var positions = batch.Positions.AsSpan(0, n);
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            var xs = x.AsSpan(0, n * hidden);
            var ns = xn.AsSpan(0, n * hidden);
            RmsNorm.Forward(xs, inputNorms[l], eps, ns, rstd.AsSpan(0, n), n, hidden, kernel);
            var qs = q.AsSpan(0, n * qDim);
            var ks = k.AsSpan(0, n * kvDim);
            var vs = v.AsSpan(0, n * kvDim);
            Project(l, Projections.Q, ns, qs, batch, table);
            Project(l, Projections.K, ns, ks, batch, table);
            Project(l, Projections.V, ns, vs, batch, table);
            Rope.Forward(qs, positions, invFreq, qs, n, heads, headDim, kernel);
            Rope.Forward(ks, positions, invFreq, ks, n, kvHeads, headDim, kernel);
            Attend(l, batch);
            var tmp = xn.AsSpan(0, n * hidden);
            Project(l, Projections.O, att.AsSpan(0, n * qDim), tmp, batch, table);
            AddSites(l, attention: true, xs, tmp, batch, table);
            TensorPrimitives.Add(xs, tmp, xs);
            RmsNorm.Forward(xs, postNorms[l], eps, ns, rstd.AsSpan(0, n), n, hidden, kernel);
            MixLoraMlp(l, ns, batch, table);
            var gs = gate.AsSpan(0, n * inter);
            var us = up.AsSpan(0, n * inter);
            Project(l, Projections.Gate, ns, gs, batch, table);
            Project(l, Projections.Up, ns, us, batch, table);
            SwiGlu.Forward(gs, us, gs, kernel);
            Project(l, Projections.Down, gs, tmp, batch, table);
            ReplaceMixLoraRows(tmp, batch);
            AddSites(l, attention: false, xs, tmp, batch, table);
            TensorPrimitives.Add(xs, tmp, xs);
        }
    }

    private void Embed(ReadOnlySpan<int> ids, Span<float> y) => Ops.Functional.EmbeddingRows(ids, embedding, y);

    /// <summary>Copies the last row of every group that wants logits into its row of logitsIn.</summary>
    private void GatherLogitRows(StepBatch batch)
    {
        for (int s = 0; s < batch.Count; s++)
        {
            if (batch.LogitRow[s] >= 0)
            {
                x.AsSpan((batch.SequenceStart[s + 1] - 1) * hidden, hidden).CopyTo(logitsIn.AsSpan(batch.LogitRow[s] * hidden));
            }
        }
    }

    /// <summary>y = proj_p(input) for every row, each row with its sequence's adapter.</summary>
    private void Project(int layer, int p, Span<float> input, Span<float> y, StepBatch batch, AdapterTable table)
    {
        var (inF, outF) = shapes[p];
        var xin = AdapterInput(layer, p, input, batch, table);
        BaseProduct(xin, weights[layer, p], quantized[layer, p], y, batch.Rows, inF, outF);
        ApplyAdapters(layer, p, xin, y, batch, table);
    }

    /// <summary>The projection's input: <paramref name="input"/> itself, or a copy with IA³ feed-forward rows scaled.</summary>
    private ReadOnlySpan<float> AdapterInput(int layer, int p, Span<float> input, StepBatch batch, AdapterTable table)
    {
        var e = table.At(layer, p);
        if (!e.AnyIa3Input || !AnyRow(batch, e.Ia3, e.Ia3Feedforward, true))
        {
            return input;
        }

        int inF = shapes[p].In;
        var copy = inputScratch.AsSpan(0, batch.Rows * inF);
        input.CopyTo(copy);
        for (int s = 0; s < batch.Count; s++)
        {
            int slot = batch.Slot[s];
            if (slot >= 0 && e.Ia3[slot] is { } l && e.Ia3Feedforward[slot])
            {
                ScaleRows(copy, l, batch.SequenceStart[s], batch.SequenceStart[s + 1], inF);
            }
        }

        return copy;
    }

    /// <summary>Adds to the base product y (no bias yet) the bias and each row's adapter: DoRA scale, LoRA (BGMV), lora bias, IA³ output scale.</summary>
    private void ApplyAdapters(int layer, int p, ReadOnlySpan<float> xin, Span<float> y, StepBatch batch, AdapterTable table)
    {
        var (inF, outF) = shapes[p];
        int n = batch.Rows, count = batch.Count;
        var e = table.At(layer, p);
        for (int s = 0; s < count; s++)
        {
            int slot = batch.Slot[s];
            if (slot >= 0 && e.AnyDora && e.DoraScale[slot] is { } g)
            {
                ScaleRows(y, g, batch.SequenceStart[s], batch.SequenceStart[s + 1], outF);
            }
        }

        if (biases[layer, p] is { } bias)
        {
            for (int i = 0; i < n; i++)
            {
                var row = y.Slice(i * outF, outF);
                TensorPrimitives.Add(row, bias, row);
            }
        }

        // One BGMV per chunk of adapter slots that has rows in this batch (rows of other chunks are −1 there).
        for (int chunk = 0; e.AnyLora && chunk < e.Packs.Length; chunk++)
        {
            if (e.Packs[chunk] is not { } pack)
            {
                continue;
            }

            // BGMV with each row's adapter: it orders the rows by adapter (a stable counting sort) and cuts each adapter's rows
            // into tiles of up to 4, each streaming the adapter's factors once for all its rows (64 decode rows on 8 adapters:
            // 16 tiles, not 64). Its result does not depend on how rows are grouped (SegmentedLora: SGMV = BGMV, bit for bit).
            bool any = false;
            for (int s = 0; s < count; s++)
            {
                int slot = batch.Slot[s];
                bool mine = slot >= 0 && slot / AdapterTable.ChunkSize == chunk;
                int adapter = mine ? e.PackIndex[slot] : -1;
                float scale = mine ? e.Scale[slot] : 0f;
                any |= adapter >= 0;
                int start = batch.SequenceStart[s], rows = batch.SequenceStart[s + 1] - start;
                rowAdapters.AsSpan(start, rows).Fill(adapter);
                rowScales.AsSpan(start, rows).Fill(scale);
            }

            if (any)
            {
                // Decode-sized batches run the adapters on one thread (no fork-join, no allocation).
                var lora = n <= DecodeGemv.MaxRows ? new KernelOptions(1, options.Path) : kernel;
                SegmentedLora.Bgmv(xin, rowAdapters.AsSpan(0, n), rowScales.AsSpan(0, n), pack.Adapters, y, n, inF, outF, lora);
            }
        }

        for (int s = 0; s < count; s++)
        {
            int slot = batch.Slot[s];
            if (slot < 0)
            {
                continue;
            }

            if (e.LoraBias[slot] is { } lb)
            {
                for (int i = batch.SequenceStart[s]; i < batch.SequenceStart[s + 1]; i++)
                {
                    var row = y.Slice(i * outF, outF);
                    TensorPrimitives.Add(row, lb, row);
                }
            }

            if (e.AnyIa3Output && e.Ia3[slot] is { } l && !e.Ia3Feedforward[slot])
            {
                ScaleRows(y, l, batch.SequenceStart[s], batch.SequenceStart[s + 1], outF);
            }
        }

        AddXLora(layer, p, xin, y, batch);
    }

    private static bool AnyRow(StepBatch batch, float[]?[] vectors, bool[] flags, bool flag)
    {
        for (int s = 0; s < batch.Count; s++)
        {
            int slot = batch.Slot[s];
            if (slot >= 0 && vectors[slot] != null && flags[slot] == flag)
            {
                return true;
            }
        }

        return false;
    }

    private static void ScaleRows(Span<float> y, ReadOnlySpan<float> scale, int start, int end, int width)
    {
        for (int i = start; i < end; i++)
        {
            var row = y.Slice(i * width, width);
            TensorPrimitives.Multiply(row, scale, row);
        }
    }
}
