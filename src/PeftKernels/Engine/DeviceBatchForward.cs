// The engine's forward pass on a device (CUDA, or ILGPU's CPU accelerator in tests): the device twin
// of BatchForward, the same equations (BatchForward.cs's header) with every op a GPU kernel. Per layer,
// for the step's n rows (prompt chunks and decode tokens of many sequences, each with its own adapter):
//   xn = rmsnorm(x)·w_in;  q, k, v = proj(xn) (base GEMM + each row's adapter, DeviceBatchForward.Adapters.cs)
//   RoPE on q and k at each row's position; PagedAttentionKernels.Write puts k, v into each row's
//   sequence's block (the device KV blocks of the pool, DeviceKvBlocks); PagedAttentionKernels.Forward:
//   o_i = softmax(q_i·K_s[0..p_i]ᵀ/√d)·V_s[0..p_i] through the sequence's block table (causal, GQA)
//   x += o_proj(o);  xn = rmsnorm(x)·w_post;  x += down(silu(gate(xn)) ⊙ up(xn))
// then logits = lm_head(rmsnorm(x_last)·w_norm) for the last row of each sequence that wants them.
// Host ↔ device traffic per step (StepInputs): one upload of the step's ints (token ids, positions,
// block tables, the rows whose logits are taken, segment starts, each projection's per-segment adapter
// index) and one of its floats (the segments' LoRA scales), then exactly one wait and one download of
// the logits rows (WaitAndDownload; MixLoRA rows add theirs, below). Scheduling and sampling stay on the host.
// Every device buffer is allocated at construction, sized for the step's maximum rows and sequences;
// only the step-input buffers (when more adapter chunks are resident than before) and the SGMV scratch
// (when an adapter of a larger rank is loaded) grow, between steps, never per step in steady state.
// Bottleneck adapters (and their Stack / Average / Fuse compositions) add their residual-site Δ on their
// sequences' rows before each residual add (DeviceBatchForward.Sites.cs), with no extra wait. MixLoRA
// rows get their routed MLP mixture instead of the base MLP (DeviceBatchForward.MixLora.cs): one more
// wait per layer and MixLoRA adapter in the step (the library's top-k routing reads the choice).
// X-LoRA: a scaling pass over the X-LoRA rows (RunHidden), their classifiers' scalings kept on the device,
// then the experts on their rows in the main run (DeviceBatchForward.XLora.cs), with no extra wait.
using PeftKernels.Models;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

/// <summary>The batched forward of one engine step over a paged KV cache, on a device.</summary>
internal sealed partial class DeviceBatchForward : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly LlamaForCausalLM model;
    private readonly Device device;
    private readonly LlamaConfig config;
    private readonly DeviceWeightOperand[,] weights;
    private readonly FloatView[,] biases;
    private readonly FloatView[] inputNorms;
    private readonly FloatView[] postNorms;
    private readonly FloatView finalNorm;
    private readonly FloatView embedding;
    private readonly DeviceWeightOperand lmHead;
    private readonly (int In, int Out)[] shapes;
    private readonly float eps;
    private readonly int hidden, qDim, kvDim, inter, heads, kvHeads, headDim, vocab, maxRows, maxSequences;
    private readonly DeviceKvBlocks blocks;
    private readonly int blockSize;
    private readonly List<IDisposable> owned = [];
    private readonly DeviceArray<float> invFreq, x, xn, tmp, q, k, v, att, gate, up, rstd, inputScratch, logits;
    private readonly float[] hostLogits;
    private readonly StepInputs inputs;
    private DeviceArray<float> h;
    private int hGrowths;

    public DeviceBatchForward(LlamaForCausalLM model, KvBlockPool pool, int maxRows, int maxSequences, int maxLength)
    {
        this.model = model;
        device = model.Device;
        accelerator = device.Accelerator;
        blocks = pool.Device ?? throw new ArgumentException("the device forward needs a KV pool whose blocks live on the device.", nameof(pool));
        blockSize = pool.BlockSize;
        config = model.Config;
        hidden = config.HiddenSize;
        heads = config.NumAttentionHeads;
        kvHeads = config.NumKeyValueHeads;
        headDim = config.HeadDim;
        qDim = heads * headDim;
        kvDim = kvHeads * headDim;
        inter = config.IntermediateSize;
        vocab = config.VocabSize;
        eps = (float)config.RmsNormEps;
        this.maxRows = maxRows;
        this.maxSequences = maxSequences;
        if (headDim > PagedAttentionKernels.MaxHeadDim)
        {
            throw new NotSupportedException($"the device engine's paged attention takes head_dim ≤ {PagedAttentionKernels.MaxHeadDim}; the model has {headDim}. Run the engine on the CPU.");
        }

        if (model.LmHead.Bias != null)
        {
            throw new NotSupportedException("the engine serves lm_head without a bias (Llama-family models have none).");
        }

        int layers = config.NumHiddenLayers;
        shapes = [(hidden, qDim), (hidden, kvDim), (hidden, kvDim), (qDim, hidden), (hidden, inter), (hidden, inter), (inter, hidden)];
        weights = new DeviceWeightOperand[layers, Projections.Count];
        biases = new FloatView[layers, Projections.Count];
        inputNorms = new FloatView[layers];
        postNorms = new FloatView[layers];
        for (int l = 0; l < layers; l++)
        {
            var layer = model.Model.Layers[l];
            inputNorms[l] = layer.InputLayerNorm.Weight.View(device);
            postNorms[l] = layer.PostAttentionLayerNorm.Weight.View(device);
            for (int p = 0; p < Projections.Count; p++)
            {
                var linear = Projections.Of(layer, p);
                weights[l, p] = linear.Weight.DeviceWeight(device);
                biases[l, p] = linear.Bias?.View(device) ?? default;
            }
        }

        finalNorm = model.Model.Norm.Weight.View(device);
        embedding = model.Model.EmbedTokens.Weight.View(device);
        lmHead = model.LmHead.Weight.DeviceWeight(device);
        Adapters = new DeviceAdapterTable(accelerator, layers);
        owned.Add(Adapters);
        invFreq = Own(accelerator.Upload(model.Model.Layers[0].SelfAttn.InvFreq));
        x = Floats((long)maxRows * hidden);
        xn = Floats((long)maxRows * hidden);
        tmp = Floats((long)maxRows * hidden);
        q = Floats((long)maxRows * qDim);
        k = Floats((long)maxRows * kvDim);
        v = Floats((long)maxRows * kvDim);
        att = Floats((long)maxRows * qDim);
        gate = Floats((long)maxRows * inter);
        up = Floats((long)maxRows * inter);
        rstd = Floats(maxRows);
        inputScratch = Floats((long)maxRows * Math.Max(Math.Max(hidden, qDim), inter));
        int logitRows = Math.Min(maxRows, maxSequences);
        logits = Floats((long)logitRows * vocab);
        hostLogits = new float[(long)logitRows * vocab];
        h = accelerator.Rent<float>(maxRows);
        inputs = new StepInputs(accelerator, layers, maxRows, maxSequences, (maxLength + blockSize - 1) / blockSize);
        owned.Add(inputs);
    }

    /// <summary>(in, out) of each projection.</summary>
    public (int In, int Out)[] Shapes => shapes;

    /// <summary>The adapters' device data (synced by the engine when its table changes).</summary>
    public DeviceAdapterTable Adapters { get; }

    /// <summary>Device buffers allocated after construction (the SGMV scratch and step inputs grown); 0 in steady state.</summary>
    public int Growths => inputs.Growths + hGrowths;

    /// <summary>Uploads the adapters <paramref name="table"/> holds that the device lacks, frees those it dropped; grows the SGMV scratch for a larger rank.</summary>
    public void SyncAdapters(AdapterTable table)
    {
        Adapters.Sync(table);
        long need = (long)maxRows * Math.Max(1, Adapters.MaxRank);
        if (h.Length < need)
        {
            h.Dispose();
            h = accelerator.Rent<float>(need);
            hGrowths++;
        }
    }

    /// <summary>Runs the step; returns logits [batch.LogitRows, vocab] on the host (valid until the next call).</summary>
    public ReadOnlySpan<float> Run(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows, m = batch.LogitRows;
        if (!ReferenceEquals(model.Device, device))
        {
            throw new InvalidOperationException($"the engine's model moved from {device} to {model.Device}; the device engine reads its weights on {device}. Keep the model there while the engine lives.");
        }

        Decoder(batch, table);
        if (m > 0)
        {
            // The last row of each sequence that wants logits, gathered as an embedding lookup into the rows of x.
            var gathered = Rows(tmp, hidden, m);
            var normed = Rows(xn, hidden, m);
            EmbeddingKernels.Forward(accelerator, Rows(x, hidden, n), inputs.LogitSource, gathered, m, n, hidden);
            RmsNormKernels.Forward(accelerator, gathered, finalNorm, eps, normed, rstd.View.SubView(0, m), m, hidden);
            GemmKernels.Forward(accelerator, normed, lmHead, default, Rows(logits, vocab, m), m, hidden, vocab);
        }

        return WaitAndDownload(m);
    }

    /// <summary>Uploads the step's inputs, embeds its rows into x and runs every decoder layer over them.</summary>
    private void Decoder(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        inputs.Fill(batch, table, Adapters);
        for (int s = 0; s < batch.Count; s++)
        {
            int start = batch.SequenceStart[s];
            batch.Sequences[s].MarkWritten(batch.Positions[start], batch.SequenceStart[s + 1] - start);
        }

        EmbeddingKernels.Forward(accelerator, embedding, inputs.Tokens, Rows(x, hidden, n), n, vocab, hidden);
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            Layer(l, batch, table);
        }
    }

    /// <summary>Frees every device buffer it allocated (the model's weights and the pool's blocks are not its own).</summary>
    public void Dispose()
    {
        h.Dispose();
        foreach (var d in owned)
        {
            d.Dispose();
        }
    }

    /// <summary>One decoder layer over the step's rows (the equations in the file header).</summary>
    private void Layer(int l, StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        var xs = Rows(x, hidden, n);
        var ns = Rows(xn, hidden, n);
        var qs = Rows(q, qDim, n);
        var ks = Rows(k, kvDim, n);
        var vs = Rows(v, kvDim, n);
        var ts = Rows(tmp, hidden, n);
        RmsNormKernels.Forward(accelerator, xs, inputNorms[l], eps, ns, rstd.View.SubView(0, n), n, hidden);
        Project(l, Projections.Q, ns, qs, batch, table);
        Project(l, Projections.K, ns, ks, batch, table);
        Project(l, Projections.V, ns, vs, batch, table);
        RopeKernels.Forward(accelerator, qs, inputs.Positions, invFreq.View, qs, n, heads, headDim);
        RopeKernels.Forward(accelerator, ks, inputs.Positions, invFreq.View, ks, n, kvHeads, headDim);
        PagedAttentionKernels.Write(accelerator, ks, vs, inputs.Positions, inputs.RowTables, inputs.Tables, blocks.Keys(l), blocks.Values(l), n, kvDim, blockSize);
        PagedAttentionKernels.Forward(accelerator, qs, blocks.Keys(l), blocks.Values(l), inputs.Positions, inputs.RowTables, inputs.Tables,
            Rows(att, qDim, n), n, heads, kvHeads, headDim, blockSize, 1f / MathF.Sqrt(headDim));
        Project(l, Projections.O, Rows(att, qDim, n), ts, batch, table);
        AddSites(l, attention: true, xs, ts, batch, table);
        AddKernels.Forward(accelerator, xs, ts, xs);
        RmsNormKernels.Forward(accelerator, xs, postNorms[l], eps, ns, rstd.View.SubView(0, n), n, hidden);
        var gs = Rows(gate, inter, n);
        var us = Rows(up, inter, n);
        try
        {
            MixLoraMlp(l, ns, batch, table);
            Project(l, Projections.Gate, ns, gs, batch, table);
            Project(l, Projections.Up, ns, us, batch, table);
            SwiGluKernels.Forward(accelerator, gs, us, gs);
            Project(l, Projections.Down, gs, ts, batch, table);
            ReplaceMixLoraRows(ts, batch);
        }
        finally
        {
            EndMixScope();
        }

        AddSites(l, attention: false, xs, ts, batch, table);
        AddKernels.Forward(accelerator, xs, ts, xs);
    }

    /// <summary>
    /// The step's one synchronization: waits for every kernel enqueued since the last step (uploads, block copies, the
    /// forward), then copies the logits rows to the host. Nothing else in a step waits for the device.
    /// </summary>
    private ReadOnlySpan<float> WaitAndDownload(int m)
    {
        var host = hostLogits.AsSpan(0, m * vocab);
        if (m > 0)
        {
            DeviceSync.Download(logits.View.SubView(0, (long)m * vocab), host);
        }
        else
        {
            DeviceSync.Wait(accelerator);
        }

        return host;
    }

    private static FloatView Rows(DeviceArray<float> buffer, int width, int rows) => buffer.View.SubView(0, (long)rows * width);

    private DeviceArray<float> Floats(long length) => Own(accelerator.Rent<float>(Math.Max(1, length)));

    private T Own<T>(T buffer)
        where T : IDisposable
    {
        owned.Add(buffer);
        return buffer;
    }
}
