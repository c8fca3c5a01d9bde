// Llama-family causal LM: the decoder stack, then lm_head (tied to embed_tokens when the
// config says so). Causal LM loss: logits at position t predict token t+1, mean cross-entropy
// over the labels that are not −100; the caller passes inputs and already-shifted labels.
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Embedding = PeftKernels.Nn.Embedding;

namespace PeftKernels.Models;

/// <summary>A Llama-family causal language model (Llama 2/3, TinyLlama, SmolLM, Qwen2, Mistral).</summary>
public sealed partial class LlamaForCausalLM : Module
{
    private LlamaForCausalLM(LlamaConfig config, LlamaModel model, Linear lmHead)
    {
        Config = config;
        Model = model;
        LmHead = lmHead;
    }

    /// <summary>The architecture.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The decoder stack ("model.").</summary>
    public LlamaModel Model { get; }

    /// <summary>lm_head [vocab, hidden]; shares its weight with embed_tokens when tied.</summary>
    public Linear LmHead { get; }

    /// <summary>The device the model runs on (where its embedding table is; <see cref="Module.To"/> moves every parameter together).</summary>
    public Device Device => Model.EmbedTokens.Weight.Device;

    /// <summary>The folder the model was loaded from (tokenizer files live there), or null.</summary>
    public string? SourceFolder { get; private set; }

    /// <summary>
    /// The weights that held NaN or infinite values when <see cref="Load"/> read them, in model order (embedding, layers,
    /// norm, lm_head); empty for a clean or a created model.
    /// </summary>
    public IReadOnlyList<NonFiniteTensor> NonFiniteTensors { get; private set; } = [];

    /// <summary>A randomly initialised fp32 model (HF init: N(0, 0.02²) weights, zero biases, unit norms), seeded.</summary>
    public static LlamaForCausalLM Create(LlamaConfig config, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(config);
        var rng = new Random(seed);
        float[] Normal(long count)
        {
            var data = new float[count];
            for (long i = 0; i < count; i++)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                data[i] = (float)(0.02 * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }

            return data;
        }

        return Build(config, (name, shape) =>
        {
            long count = shape.Aggregate(1L, (a, d) => a * d);
            var data = name.EndsWith("norm.weight", StringComparison.Ordinal) ? Enumerable.Repeat(1f, (int)count).ToArray()
                : name.EndsWith(".bias", StringComparison.Ordinal) ? new float[count]
                : Normal(count);
            return new Parameter(data, shape);
        });
    }

    /// <summary>Logits [B·T, vocab] for tokens [B·T] (row-major, batch rows of length T).</summary>
    /// <param name="tokens">Token ids, batch row after batch row.</param>
    /// <param name="batch">Number of sequences.</param>
    /// <param name="cache">With a cache (on the model's device: <see cref="CreateCache"/>), the tokens continue the cached sequences (inference only).</param>
    /// <param name="context">Dropout seed and kernel options.</param>
    public Tensor Forward(int[] tokens, int batch = 1, KvCache? cache = null, ForwardContext? context = null)
    {
        var hidden = Hidden(tokens, batch, cache, context);
        return LmHead.Forward(hidden, context);
    }

    /// <summary>Mean causal-LM cross-entropy of <paramref name="labels"/> (next tokens, −100 ignored) given <paramref name="inputs"/>.</summary>
    public Tensor Loss(int[] inputs, int[] labels, int batch = 1, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (labels.Length != inputs.Length)
        {
            throw new ArgumentException($"{labels.Length} labels for {inputs.Length} input tokens; give one label per input position.", nameof(labels));
        }

        var logits = Forward(inputs, batch, null, context);
        return WithAuxiliaryLosses(Functional.CrossEntropy(logits, labels, consumeLogits: true, (context ?? ForwardContext.Default).Kernel));
    }

    /// <summary>Causal-LM loss of one token sequence: positions 0..N−2 predict tokens 1..N−1 (HF's labels = input_ids).</summary>
    public double Score(int[] tokens, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Length < 2)
        {
            throw new ArgumentException($"scoring needs at least 2 tokens (one prediction); got {tokens.Length}.", nameof(tokens));
        }

        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
            {
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} at position {i} is outside the vocabulary [0, {Config.VocabSize}).");
            }
        }

        using var scope = Tape.NoGrad();
        return Loss(tokens[..^1], tokens[1..], 1, context).Item();
    }

    /// <summary>Quantizes the base weights of every Linear except lm_head to 4 bits (QLoRA base), in place.</summary>
    /// <returns>Bytes of the replaced weights before and after.</returns>
    public (long Before, long After) QuantizeLinears(Quant4Type type = Quant4Type.Nf4, int blocksize = 64, bool doubleQuant = true)
    {
        long before = 0, after = 0;
        foreach (var (name, module) in NamedModules())
        {
            if (module is not Linear linear || ReferenceEquals(linear, LmHead) || linear.Weight.DType == TensorDType.Q4)
            {
                continue;
            }

            var w = linear.Weight;
            var q = w.DType switch
            {
                TensorDType.BF16 => QuantizedWeight.Quantize(w.Bf16Bits, w.Shape, type, blocksize, doubleQuant),
                TensorDType.F16 => QuantizedWeight.Quantize(w.F16Values, w.Shape, type, blocksize, doubleQuant),
                _ => QuantizedWeight.Quantize(w.Data, w.Shape, type, blocksize, doubleQuant),
            };
            before += w.ByteSize;
            linear.ReplaceWeight(new Parameter(q));
            after += q.ByteSize;
        }

        return (before, after);
    }

    internal Tensor Hidden(int[] tokens, int batch, KvCache? cache, ForwardContext? context)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        context ??= ForwardContext.Default;
        if (batch <= 0 || tokens.Length == 0 || tokens.Length % batch != 0)
        {
            throw new ArgumentException($"{tokens.Length} tokens do not split into {batch} equal non-empty sequences.", nameof(tokens));
        }

        int t = tokens.Length / batch;
        int past = cache?.Length ?? 0;
        if (cache != null)
        {
            if (cache.Batch != batch)
            {
                throw new ArgumentException($"the KV cache holds {cache.Batch} sequences; this call has batch {batch}.", nameof(cache));
            }

            cache.EnsureUsable(Device, Config.NumHiddenLayers, Config.NumKeyValueHeads * Config.HeadDim, t);
        }

        var positions = new int[tokens.Length];
        for (int i = 0; i < positions.Length; i++)
        {
            positions[i] = past + (i % t);
        }

        return Model.Forward(tokens, batch, positions, cache, context);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() => [("model", Model), ("lm_head", LmHead)];

    private static LlamaForCausalLM Build(LlamaConfig c, Func<string, int[], Parameter> make)
    {
        int h = c.HiddenSize, hd = c.HeadDim, qDim = c.NumAttentionHeads * hd, kvDim = c.NumKeyValueHeads * hd, inter = c.IntermediateSize;
        var invFreq = InverseFrequencies(c);
        Linear MakeLinear(string name, int outF, int inF, bool bias) =>
            new(make(name + ".weight", [outF, inF]), bias ? make(name + ".bias", [outF]) : null);
        var embed = new Embedding(make("model.embed_tokens.weight", [c.VocabSize, h]));
        var layers = new List<LlamaDecoderLayer>();
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var attention = new LlamaAttention(c,
                MakeLinear(p + "self_attn.q_proj", qDim, h, c.AttentionBias),
                MakeLinear(p + "self_attn.k_proj", kvDim, h, c.AttentionBias),
                MakeLinear(p + "self_attn.v_proj", kvDim, h, c.AttentionBias),
                MakeLinear(p + "self_attn.o_proj", h, qDim, c.AttentionOutputBias),
                invFreq);
            var mlp = new LlamaMlp(MakeLinear(p + "mlp.gate_proj", inter, h, c.MlpBias), MakeLinear(p + "mlp.up_proj", inter, h, c.MlpBias),
                MakeLinear(p + "mlp.down_proj", h, inter, c.MlpBias));
            layers.Add(new LlamaDecoderLayer(new RmsNormLayer(make(p + "input_layernorm.weight", [h]), (float)c.RmsNormEps), attention,
                new RmsNormLayer(make(p + "post_attention_layernorm.weight", [h]), (float)c.RmsNormEps), mlp));
        }

        var model = new LlamaModel(embed, layers, new RmsNormLayer(make("model.norm.weight", [h]), (float)c.RmsNormEps));
        var lmHead = c.TieWordEmbeddings ? new Linear(embed.Weight) : new Linear(make("lm_head.weight", [c.VocabSize, h]));
        return new LlamaForCausalLM(c, model, lmHead);
    }

    private static float[] InverseFrequencies(LlamaConfig c)
    {
        var scaling = c.RopeScaling;
        if (scaling == null || scaling.RopeType == "default")
        {
            return Rope.InverseFrequencies(c.HeadDim, c.RopeTheta);
        }

        if (scaling.RopeType == "linear")
        {
            return [.. Rope.InverseFrequencies(c.HeadDim, c.RopeTheta).Select(f => (float)(f / scaling.Factor))];
        }

        return Rope.InverseFrequenciesLlama3(c.HeadDim, c.RopeTheta, scaling.Factor, scaling.LowFreqFactor ?? 1, scaling.HighFreqFactor ?? 4,
            scaling.OriginalMaxPositionEmbeddings ?? 8192);
    }
}
