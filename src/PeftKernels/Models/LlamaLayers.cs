// The Llama decoder (docs/formats/llama-checkpoints.md#forward), pre-norm:
//   h   = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x)
//   out = h + down_proj(silu(gate_proj(n2)) ⊙ up_proj(n2)),                 n2 = rmsnorm(h)
// Activations are [B·T, features] row-major, which is exactly the [B, T, heads, headDim]
// layout the attention kernel reads, so no transposes happen anywhere. With a KV cache the new
// keys/values are appended to it and the queries attend over every cached position (on the
// cache's device: host arrays on the CPU, device buffers on an accelerator).
using ILGPU.Runtime;
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Models;

/// <summary>Llama self-attention with grouped-query heads and rotary embeddings.</summary>
public sealed partial class LlamaAttention : Module
{
    internal LlamaAttention(LlamaConfig config, Linear q, Linear k, Linear v, Linear o, float[] invFreq)
    {
        Config = config;
        QProj = q;
        KProj = k;
        VProj = v;
        OProj = o;
        InvFreq = invFreq;
    }

    /// <summary>The model config.</summary>
    public LlamaConfig Config { get; }

    /// <summary>q_proj [heads·headDim, hidden].</summary>
    public Linear QProj { get; }

    /// <summary>k_proj [kvHeads·headDim, hidden].</summary>
    public Linear KProj { get; }

    /// <summary>v_proj [kvHeads·headDim, hidden].</summary>
    public Linear VProj { get; }

    /// <summary>o_proj [hidden, heads·headDim].</summary>
    public Linear OProj { get; }

    /// <summary>RoPE inverse frequencies [headDim / 2] (after any rope scaling).</summary>
    public float[] InvFreq { get; }

    /// <summary>Attention over x [B·T, hidden]; with a cache, over the cached positions too (no grad).</summary>
    public Tensor Forward(Tensor x, int batch, int[] positions, KvCache? cache, int layer, ForwardContext context)
    {
        int nh = Config.NumAttentionHeads, nkv = Config.NumKeyValueHeads, hd = Config.HeadDim;
        var q = Functional.Rope(QProj.Forward(x, context), positions, InvFreq, nh, hd, context.Kernel);
        var k = Functional.Rope(KProj.Forward(x, context), positions, InvFreq, nkv, hd, context.Kernel);
        var v = VProj.Forward(x, context);
        AddPrefix(ref k, ref v, batch, cache, layer, context);
        var o = cache == null
            ? Functional.Attention(q, k, v, batch, nh, nkv, hd, context.Kernel)
            : CachedAttention(q, k, v, batch, cache, layer, context);
        return OProj.Forward(o, context);
    }

    private Tensor CachedAttention(Tensor q, Tensor k, Tensor v, int batch, KvCache cache, int layer, ForwardContext context)
    {
        if (Autograd.Tape.IsRecording && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad))
        {
            throw new InvalidOperationException("the KV cache is for inference: run generation inside Tape.NoGrad().");
        }

        if (!ReferenceEquals(cache.Device, q.Device))
        {
            throw new ArgumentException($"the KV cache is on {cache.Device} but layer {layer}'s attention runs on {q.Device}; create the cache on the model's device.", nameof(cache));
        }

        if (q.Device.IsGpu)
        {
            return CachedAttentionOnDevice(q, k, v, batch, cache, layer);
        }

        int nh = Config.NumAttentionHeads, nkv = Config.NumKeyValueHeads, hd = Config.HeadDim;
        int t = q.Rows / batch, kvDim = nkv * hd, qDim = nh * hd, past = cache.Length, total = past + t;
        var o = new float[q.Count];
        var lse = new float[nh * t];
        for (int b = 0; b < batch; b++)
        {
            var keys = cache.Keys(layer, b);
            var values = cache.Values(layer, b);
            k.Data.AsSpan(b * t * kvDim, t * kvDim).CopyTo(keys.AsSpan(past * kvDim));
            v.Data.AsSpan(b * t * kvDim, t * kvDim).CopyTo(values.AsSpan(past * kvDim));
            Kernels.Cpu.Attention.Forward(q.Data.AsSpan(b * t * qDim, t * qDim), keys.AsSpan(0, total * kvDim), values.AsSpan(0, total * kvDim),
                o.AsSpan(b * t * qDim, t * qDim), lse, 1, t, total, nh, nkv, hd, 1f / MathF.Sqrt(hd), context.Kernel);
        }

        return new Tensor(o, q.Shape);
    }

    /// <summary>
    /// The device cache: each batch row's new K/V rows are copied (device to device) after its cached rows, then the GPU
    /// attention kernel runs per row over the first past + t rows, its queries being the last t of them (offset = past).
    /// </summary>
    private Tensor CachedAttentionOnDevice(Tensor q, Tensor k, Tensor v, int batch, KvCache cache, int layer)
    {
        var device = q.Device;
        var accelerator = device.Accelerator;
        int nh = Config.NumAttentionHeads, nkv = Config.NumKeyValueHeads, hd = Config.HeadDim;
        int t = q.Rows / batch, kvDim = nkv * hd, qDim = nh * hd, past = cache.Length, total = past + t;
        long rowStride = (long)cache.Capacity * kvDim;
        var keys = cache.DeviceKeys(layer);
        var values = cache.DeviceValues(layer);
        var qView = q.View(device);
        var kView = k.View(device);
        var vView = v.View(device);
        var o = OpChecks.DeviceTensor(device, q.Shape);
        var oView = o.View(device);
        var lse = cache.DeviceScratch((long)nh * t);
        for (int b = 0; b < batch; b++)
        {
            long newRows = (b * rowStride) + ((long)past * kvDim);
            keys.SubView(newRows, t * kvDim).CopyFrom(kView.SubView((long)b * t * kvDim, t * kvDim));
            values.SubView(newRows, t * kvDim).CopyFrom(vView.SubView((long)b * t * kvDim, t * kvDim));
            Kernels.Gpu.AttentionKernels.Forward(accelerator, qView.SubView((long)b * t * qDim, t * qDim), keys.SubView(b * rowStride, total * kvDim),
                values.SubView(b * rowStride, total * kvDim), oView.SubView((long)b * t * qDim, t * qDim), lse, 1, t, total, nh, nkv, hd, 1f / MathF.Sqrt(hd));
        }

        return o;
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        [("q_proj", QProj), ("k_proj", KProj), ("v_proj", VProj), ("o_proj", OProj)];
}

/// <summary>The SwiGLU feed-forward block.</summary>
public sealed partial class LlamaMlp : Module
{
    internal LlamaMlp(Linear gate, Linear up, Linear down)
    {
        GateProj = gate;
        UpProj = up;
        DownProj = down;
    }

    /// <summary>gate_proj [intermediate, hidden].</summary>
    public Linear GateProj { get; }

    /// <summary>up_proj [intermediate, hidden].</summary>
    public Linear UpProj { get; }

    /// <summary>down_proj [hidden, intermediate].</summary>
    public Linear DownProj { get; }

    /// <summary>down(silu(gate(x)) ⊙ up(x)).</summary>
    public Tensor Forward(Tensor x, ForwardContext context) => MixLoraForward(x, context) ??
        DownProj.Forward(Functional.SwiGlu(GateProj.Forward(x, context), UpProj.Forward(x, context), context.Kernel), context);

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        [("gate_proj", GateProj), ("up_proj", UpProj), ("down_proj", DownProj), .. MixLoraChildren()];
}

/// <summary>One pre-norm decoder layer.</summary>
public sealed partial class LlamaDecoderLayer : Module
{
    internal LlamaDecoderLayer(RmsNormLayer inputNorm, LlamaAttention attention, RmsNormLayer postNorm, LlamaMlp mlp)
    {
        InputLayerNorm = inputNorm;
        SelfAttn = attention;
        PostAttentionLayerNorm = postNorm;
        Mlp = mlp;
    }

    /// <summary>input_layernorm.</summary>
    public RmsNormLayer InputLayerNorm { get; }

    /// <summary>self_attn.</summary>
    public LlamaAttention SelfAttn { get; }

    /// <summary>post_attention_layernorm.</summary>
    public RmsNormLayer PostAttentionLayerNorm { get; }

    /// <summary>mlp.</summary>
    public LlamaMlp Mlp { get; }

    /// <summary>x + attn(norm(x)), then + mlp(norm(·)).</summary>
    public Tensor Forward(Tensor x, int batch, int[] positions, KvCache? cache, int layer, ForwardContext context)
    {
        var h = AfterAttention(x, SelfAttn.Forward(InputLayerNorm.Forward(x, context.Kernel), batch, positions, cache, layer, context), batch, context);
        return AfterMlp(h, Mlp.Forward(PostAttentionLayerNorm.Forward(h, context.Kernel), context), batch, context);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        [("input_layernorm", InputLayerNorm), ("self_attn", SelfAttn), ("post_attention_layernorm", PostAttentionLayerNorm), ("mlp", Mlp), .. SiteChildren()];
}

/// <summary>The decoder stack ("model." in HF names): embeddings, layers, final norm.</summary>
public sealed partial class LlamaModel : Module
{
    internal LlamaModel(Embedding embed, IReadOnlyList<LlamaDecoderLayer> layers, RmsNormLayer norm)
    {
        EmbedTokens = embed;
        Layers = layers;
        Norm = norm;
    }

    /// <summary>embed_tokens.</summary>
    public Embedding EmbedTokens { get; }

    /// <summary>layers.</summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers { get; }

    /// <summary>norm.</summary>
    public RmsNormLayer Norm { get; }

    /// <summary>Final hidden states [B·T, hidden] for tokens [B·T].</summary>
    public Tensor Forward(int[] tokens, int batch, int[] positions, KvCache? cache, ForwardContext context)
    {
        var x = EmbedTokens.Forward(tokens, context);
        for (int l = 0; l < Layers.Count; l++)
        {
            x = Layers[l].Forward(x, batch, positions, cache, l, context);
        }

        cache?.Advance(tokens.Length / batch);
        return Norm.Forward(x, context.Kernel);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        [("embed_tokens", EmbedTokens), .. Layers.Select((l, i) => ($"layers.{i}", (Module)l)), ("norm", Norm)];
}
