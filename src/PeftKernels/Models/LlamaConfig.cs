// Hyper-parameters of a Llama-family decoder (Llama 2/3, TinyLlama, SmolLM, Qwen2, Mistral) as
// Hugging Face's config.json holds them (see LlamaConfigJson for the file side). Shapes they
// imply, with L layers, H hidden, I intermediate, nh heads, nkv kv heads, hd head dim, V vocab:
//   embed_tokens [V, H]; per layer q [nh·hd, H], k and v [nkv·hd, H], o [H, nh·hd],
//   gate and up [I, H], down [H, I], two RMSNorm weights [H]; final norm [H]; lm_head [V, H]
//   unless tied to embed_tokens.
// Biases: Llama's attention_bias puts one on q, k, v and o; Qwen2 has q/k/v biases only
// (no attention_bias key in its config); mlp_bias puts one on gate, up and down.
namespace PeftKernels.Models;

/// <summary>RoPE position scaling (<c>rope_scaling</c> in config.json).</summary>
public sealed record RopeScaling
{
    /// <summary>"linear" (positions divided by <see cref="Factor"/>) or "llama3" (frequency-dependent).</summary>
    public required string RopeType { get; init; }

    /// <summary>Scaling factor (&gt; 0).</summary>
    public required double Factor { get; init; }

    /// <summary>llama3 only: wavelengths above original_max_position_embeddings / low_freq_factor are scaled fully.</summary>
    public double? LowFreqFactor { get; init; }

    /// <summary>llama3 only: wavelengths below original_max_position_embeddings / high_freq_factor are kept.</summary>
    public double? HighFreqFactor { get; init; }

    /// <summary>llama3 only: the context length the model was pre-trained with.</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }
}

/// <summary>Hyper-parameters of a Llama-family causal language model (Hugging Face config.json).</summary>
public sealed record LlamaConfig
{
    /// <summary>The model types this library runs.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = ["llama", "qwen2", "mistral"];

    /// <summary>Vocabulary size V (rows of embed_tokens and lm_head).</summary>
    public required int VocabSize { get; init; }

    /// <summary>Hidden size H.</summary>
    public required int HiddenSize { get; init; }

    /// <summary>MLP inner size I.</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Number of decoder layers L.</summary>
    public required int NumHiddenLayers { get; init; }

    /// <summary>Number of query heads nh.</summary>
    public required int NumAttentionHeads { get; init; }

    /// <summary>Number of key/value heads nkv (nh for plain multi-head attention; fewer for GQA).</summary>
    public required int NumKeyValueHeads { get; init; }

    /// <summary>Head dimension hd (usually H / nh; even, for RoPE's rotate-half).</summary>
    public required int HeadDim { get; init; }

    /// <summary>RMSNorm epsilon.</summary>
    public double RmsNormEps { get; init; } = 1e-6;

    /// <summary>RoPE base θ.</summary>
    public double RopeTheta { get; init; } = 10000;

    /// <summary>Longest sequence the position tables are built for.</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;

    /// <summary>True when lm_head shares its weight with embed_tokens.</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>MLP activation; only "silu" is supported.</summary>
    public string HiddenAct { get; init; } = "silu";

    /// <summary>Biases on the attention projections (q/k/v/o for Llama, q/k/v for Qwen2).</summary>
    public bool AttentionBias { get; init; }

    /// <summary>Biases on gate_proj, up_proj and down_proj.</summary>
    public bool MlpBias { get; init; }

    /// <summary>The dtype the weights were saved in ("float32", "bfloat16", "float16"), when stated.</summary>
    public string? TorchDtype { get; init; }

    /// <summary>Beginning-of-sequence token id, when stated.</summary>
    public int? BosTokenId { get; init; }

    /// <summary>End-of-sequence token ids (Hugging Face allows one id or a list), when stated.</summary>
    public int[]? EosTokenId { get; init; }

    /// <summary>RoPE scaling; null for none.</summary>
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>"llama", "qwen2" or "mistral".</summary>
    public string ModelType { get; init; } = "llama";

    /// <summary>The architectures list of config.json.</summary>
    public string[] Architectures { get; init; } = ["LlamaForCausalLM"];

    /// <summary>
    /// The config.json object this configuration was read from (null for one built in code). Saving keeps its keys and
    /// values, rewriting only the modelled keys whose value changed; see LlamaConfigJson.
    /// </summary>
    internal System.Text.Json.JsonElement? SourceJson { get; init; }

    /// <summary>Whether o_proj has a bias: Llama's attention_bias covers it, Qwen2's q/k/v biases do not.</summary>
    public bool AttentionOutputBias => AttentionBias && ModelType != "qwen2";

    /// <summary>A 2-layer model for unit tests: H 64, 4 heads, 2 kv heads, I 176, 512 positions.</summary>
    public static LlamaConfig Tiny(int vocabSize = 256) => Preset(vocabSize, hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 176, maxPositions: 512);

    /// <summary>A 4-layer model for quick training runs: H 128, 4 heads, 2 kv heads, I 352, 1024 positions.</summary>
    public static LlamaConfig Small(int vocabSize = 256) => Preset(vocabSize, hidden: 128, layers: 4, heads: 4, kvHeads: 2, intermediate: 352, maxPositions: 1024);

    /// <summary>A GPT-2-small-sized Llama: H 768, 12 layers, 12 heads, I 2048, vocab 32000, 2048 positions, eps 1e-5.</summary>
    public static LlamaConfig Llama125M() => Preset(32000, hidden: 768, layers: 12, heads: 12, kvHeads: 12, intermediate: 2048, maxPositions: 2048);

    /// <summary>Reads and validates a Hugging Face config.json.</summary>
    /// <exception cref="InvalidDataException">A key has the wrong type or an invalid value (the message names key, value and file).</exception>
    /// <exception cref="NotSupportedException">hidden_act, model_type or the rope_scaling type is one this library does not run.</exception>
    public static LlamaConfig Load(string configJsonPath)
    {
        ArgumentNullException.ThrowIfNull(configJsonPath);
        var config = LlamaConfigJson.Read(configJsonPath);
        config.Validate(configJsonPath, fromFile: true);
        return config;
    }

    /// <summary>Parses and validates the bytes of a config.json; <paramref name="path"/> names it in errors.</summary>
    internal static LlamaConfig Parse(byte[] utf8, string path)
    {
        var config = LlamaConfigJson.Parse(utf8, path);
        config.Validate(path, fromFile: true);
        return config;
    }

    /// <summary>
    /// Validates, then writes an HF-compatible config.json atomically. A configuration loaded from a file keeps every key
    /// of that file unchanged (unknown ones included) but those whose modelled value differs, which are rewritten in place;
    /// one built in code gets every key transformers writes for a LlamaConfig.
    /// </summary>
    /// <exception cref="InvalidOperationException">The configuration is invalid.</exception>
    public void Save(string configJsonPath) => Save(configJsonPath, []);

    /// <summary>As <see cref="Save(string)"/>, leaving out the source file's <paramref name="dropKeys"/> (e.g. a quantization_config that no longer applies).</summary>
    internal void Save(string configJsonPath, IReadOnlyCollection<string> dropKeys)
    {
        ArgumentNullException.ThrowIfNull(configJsonPath);
        Validate();
        LlamaConfigJson.Write(this, configJsonPath, dropKeys);
    }

    /// <summary>Checks sizes, head counts, epsilon, θ, token ids and rope scaling.</summary>
    /// <exception cref="InvalidOperationException">A value is invalid (the message names the config.json key and the value).</exception>
    /// <exception cref="NotSupportedException">hidden_act, model_type or the rope_scaling type is not supported.</exception>
    public void Validate() => Validate(nameof(LlamaConfig), fromFile: false);

    /// <summary>Number of parameters: embedding, layers (with the configured biases), final norm, and lm_head unless tied.</summary>
    public long ParameterCount()
    {
        long h = HiddenSize, i = IntermediateSize, q = (long)NumAttentionHeads * HeadDim, kv = (long)NumKeyValueHeads * HeadDim;
        long attention = (h * q) + (2 * h * kv) + (q * h);
        if (AttentionBias)
        {
            attention += q + (2 * kv);
        }

        if (AttentionOutputBias)
        {
            attention += h;
        }

        long mlp = 3 * h * i;
        if (MlpBias)
        {
            mlp += (2 * i) + h;
        }

        long embedding = (long)VocabSize * h;
        return embedding + (NumHiddenLayers * (attention + mlp + (2 * h))) + h + (TieWordEmbeddings ? 0 : embedding);
    }

    /// <summary>Value equality, with <see cref="EosTokenId"/> and <see cref="Architectures"/> compared element by element.</summary>
    public bool Equals(LlamaConfig? other) =>
        other is not null
        && VocabSize == other.VocabSize && HiddenSize == other.HiddenSize && IntermediateSize == other.IntermediateSize
        && NumHiddenLayers == other.NumHiddenLayers && NumAttentionHeads == other.NumAttentionHeads
        && NumKeyValueHeads == other.NumKeyValueHeads && HeadDim == other.HeadDim
        && RmsNormEps.Equals(other.RmsNormEps) && RopeTheta.Equals(other.RopeTheta)
        && MaxPositionEmbeddings == other.MaxPositionEmbeddings && TieWordEmbeddings == other.TieWordEmbeddings
        && HiddenAct == other.HiddenAct && AttentionBias == other.AttentionBias && MlpBias == other.MlpBias
        && TorchDtype == other.TorchDtype && BosTokenId == other.BosTokenId
        && SameItems(EosTokenId, other.EosTokenId) && RopeScaling == other.RopeScaling
        && ModelType == other.ModelType && SameItems(Architectures, other.Architectures);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var hash = new HashCode();
        hash.Add(VocabSize);
        hash.Add(HiddenSize);
        hash.Add(IntermediateSize);
        hash.Add(NumHiddenLayers);
        hash.Add(NumAttentionHeads);
        hash.Add(NumKeyValueHeads);
        hash.Add(HeadDim);
        hash.Add(RmsNormEps);
        hash.Add(RopeTheta);
        hash.Add(MaxPositionEmbeddings);
        hash.Add(TieWordEmbeddings);
        hash.Add(HiddenAct);
        hash.Add(AttentionBias);
        hash.Add(MlpBias);
        hash.Add(TorchDtype);
        hash.Add(BosTokenId);
        hash.Add(RopeScaling);
        hash.Add(ModelType);
        foreach (int id in EosTokenId ?? [])
        {
            hash.Add(id);
        }

        foreach (string architecture in Architectures)
        {
            hash.Add(architecture);
        }

        return hash.ToHashCode();
    }

    internal void Validate(string source, bool fromFile)
    {
        Exception Bad(string message) => fromFile ? new InvalidDataException($"{source}: {message}") : new InvalidOperationException($"{source}: {message}");

        foreach (var (key, value) in new[]
        {
            ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
            ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads),
            ("num_key_value_heads", NumKeyValueHeads), ("head_dim", HeadDim), ("max_position_embeddings", MaxPositionEmbeddings),
        })
        {
            if (value <= 0)
            {
                throw Bad($"{key} = {value}; it must be positive.");
            }
        }

        if (NumAttentionHeads % NumKeyValueHeads != 0)
        {
            throw Bad($"num_attention_heads = {NumAttentionHeads} is not a multiple of num_key_value_heads = {NumKeyValueHeads}.");
        }

        if (HeadDim % 2 != 0)
        {
            throw Bad($"head_dim = {HeadDim}; it must be even (RoPE rotates the two halves of each head).");
        }

        if (!(RmsNormEps > 0) || !double.IsFinite(RmsNormEps))
        {
            throw Bad($"rms_norm_eps = {RmsNormEps}; it must be positive and finite.");
        }

        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta))
        {
            throw Bad($"rope_theta = {RopeTheta}; it must be positive and finite.");
        }

        if (HiddenAct != "silu")
        {
            throw new NotSupportedException($"{source}: hidden_act = \"{HiddenAct}\" is not supported; only \"silu\" is.");
        }

        if (!SupportedModelTypes.Contains(ModelType))
        {
            throw new NotSupportedException($"{source}: model_type = \"{ModelType}\" is not supported; expected one of {string.Join(", ", SupportedModelTypes)}.");
        }

        if (BosTokenId is < 0 || BosTokenId >= VocabSize)
        {
            throw Bad($"bos_token_id = {BosTokenId} is outside the vocabulary [0, {VocabSize}).");
        }

        foreach (int id in EosTokenId ?? [])
        {
            if (id < 0 || id >= VocabSize)
            {
                throw Bad($"eos_token_id {id} is outside the vocabulary [0, {VocabSize}).");
            }
        }

        ValidateRopeScaling(source, Bad);
    }

    private void ValidateRopeScaling(string source, Func<string, Exception> bad)
    {
        if (RopeScaling is not { } scaling)
        {
            return;
        }

        if (scaling.RopeType is not ("linear" or "llama3"))
        {
            throw UnsupportedRopeType(source, scaling.RopeType);
        }

        if (!(scaling.Factor > 0) || !double.IsFinite(scaling.Factor))
        {
            throw bad($"rope_scaling.factor = {scaling.Factor}; it must be positive and finite.");
        }

        if (scaling.RopeType == "linear")
        {
            return;
        }

        if (scaling.LowFreqFactor is not > 0 || !double.IsFinite(scaling.LowFreqFactor.Value))
        {
            throw bad($"rope_scaling.low_freq_factor = {Show(scaling.LowFreqFactor)}; llama3 scaling needs a positive value.");
        }

        if (scaling.HighFreqFactor is not { } high || !(high > scaling.LowFreqFactor) || !double.IsFinite(high))
        {
            throw bad($"rope_scaling.high_freq_factor = {Show(scaling.HighFreqFactor)}; llama3 scaling needs a value above low_freq_factor = {scaling.LowFreqFactor}.");
        }

        if (scaling.OriginalMaxPositionEmbeddings is not > 0)
        {
            throw bad($"rope_scaling.original_max_position_embeddings = {Show(scaling.OriginalMaxPositionEmbeddings)}; llama3 scaling needs a positive value.");
        }
    }

    internal static NotSupportedException UnsupportedRopeType(string source, string type) =>
        new($"{source}: rope_scaling.rope_type = \"{type}\" is not supported; expected \"default\", \"linear\" or \"llama3\" (or no rope_scaling).");

    private static string Show<T>(T? value)
        where T : struct => value?.ToString() ?? "missing";

    private static bool SameItems<T>(T[]? a, T[]? b) => a is null ? b is null : b is not null && a.SequenceEqual(b);

    private static LlamaConfig Preset(int vocabSize, int hidden, int layers, int heads, int kvHeads, int intermediate, int maxPositions)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        return new()
        {
            VocabSize = vocabSize,
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = hidden / heads,
            MaxPositionEmbeddings = maxPositions,
            RmsNormEps = 1e-5,
            RopeTheta = 10000,
            TorchDtype = "float32",
        };
    }
}
