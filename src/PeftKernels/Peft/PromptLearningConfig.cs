// adapter_config.json of PEFT's prompt-learning methods (docs/formats/prompt-learning.md#adapter_configjson):
// peft_type PROMPT_TUNING, P_TUNING or PREFIX_TUNING; the shared fields num_virtual_tokens, token_dim,
// num_transformer_submodules (1 for a causal LM), num_attention_heads, num_layers (filled from the model when the adapter
// is created, checked against the model when it is loaded); then the method's own fields. Written as PeftConfig writes
// every config (sorted keys, two-space indent), so save → load → save is byte-identical.
using System.Text.Json;

namespace PeftKernels.Peft;

/// <summary>How prompt tuning initialises its virtual tokens (PEFT's prompt_tuning_init).</summary>
public enum PromptTuningInit
{
    /// <summary>RANDOM: N(0, 1) entries (PEFT's default).</summary>
    Random,

    /// <summary>SAMPLE_VOCAB: the embeddings of N vocabulary tokens drawn uniformly.</summary>
    SampleVocab,

    /// <summary>TEXT: the embeddings of prompt_tuning_init_text's tokens, cut or repeated to N.</summary>
    Text,
}

/// <summary>The config of a prompt-tuning, P-tuning or prefix-tuning adapter (PEFT's PromptLearningConfig and its subclasses).</summary>
public sealed record PromptLearningConfig : PeftConfig
{
    /// <summary>peft_type of prompt tuning.</summary>
    public const string PromptTuningType = "PROMPT_TUNING";

    /// <summary>peft_type of P-tuning.</summary>
    public const string PTuningType = "P_TUNING";

    /// <summary>peft_type of prefix tuning.</summary>
    public const string PrefixTuningType = "PREFIX_TUNING";

    /// <summary>The three peft_type values.</summary>
    public static readonly string[] Types = [PromptTuningType, PTuningType, PrefixTuningType];

    /// <summary>A config of <paramref name="peftType"/> (PROMPT_TUNING, P_TUNING or PREFIX_TUNING).</summary>
    public PromptLearningConfig(string peftType)
    {
        Type = peftType;
    }

    /// <summary>peft_type: PROMPT_TUNING, P_TUNING or PREFIX_TUNING.</summary>
    public string Type { get; init; }

    /// <inheritdoc/>
    public override string PeftType => Type;

    /// <summary>The method as <c>peft train --method</c> spells it: prompt, p-tuning or prefix.</summary>
    public string Method => Type switch
    {
        PTuningType => "p-tuning",
        PrefixTuningType => "prefix",
        _ => "prompt",
    };

    /// <summary>num_virtual_tokens (N).</summary>
    public int NumVirtualTokens { get; init; } = 20;

    /// <summary>token_dim: hidden for prompt / P-tuning, kvHeads·headDim for prefix tuning (null until filled from the model).</summary>
    public int? TokenDim { get; init; }

    /// <summary>num_transformer_submodules: 1 for a decoder-only model.</summary>
    public int? NumTransformerSubmodules { get; init; } = 1;

    /// <summary>num_attention_heads: the model's heads for prompt / P-tuning, its key/value heads for prefix tuning.</summary>
    public int? NumAttentionHeads { get; init; }

    /// <summary>num_layers: the model's decoder layers.</summary>
    public int? NumLayers { get; init; }

    /// <summary>prompt_tuning_init (prompt tuning).</summary>
    public PromptTuningInit PromptTuningInit { get; init; } = PromptTuningInit.Random;

    /// <summary>prompt_tuning_init_text (prompt tuning with TEXT init).</summary>
    public string? PromptTuningInitText { get; init; }

    /// <summary>tokenizer_name_or_path (prompt tuning with TEXT init).</summary>
    public string? TokenizerNameOrPath { get; init; }

    /// <summary>encoder_reparameterization_type (P-tuning): "MLP" (trainable here) or "LSTM" (loads, does not train).</summary>
    public string EncoderReparameterizationType { get; init; } = "MLP";

    /// <summary>encoder_hidden_size (P-tuning's MLP width h, prefix tuning's projection width); null = token_dim.</summary>
    public int? EncoderHiddenSize { get; init; }

    /// <summary>encoder_num_layers (P-tuning; PEFT's MLP ignores it and always has two hidden layers).</summary>
    public int EncoderNumLayers { get; init; } = 2;

    /// <summary>encoder_dropout (P-tuning; must be 0 here).</summary>
    public double EncoderDropout { get; init; }

    /// <summary>prefix_projection (prefix tuning): train through Embedding → Linear → tanh → Linear.</summary>
    public bool PrefixProjection { get; init; }

    /// <summary>init_weights (prefix tuning): null (N(0, 1)) or "zero".</summary>
    public string? InitWeights { get; init; }

    /// <summary>The config of a method spelled as <c>peft train --method</c> spells it (prompt, p-tuning, prefix).</summary>
    /// <exception cref="ArgumentException">The method is none of the three.</exception>
    public static PromptLearningConfig ForMethod(string method) => method switch
    {
        "prompt" => new(PromptTuningType),
        "p-tuning" => new(PTuningType),
        "prefix" => new(PrefixTuningType),
        _ => throw new ArgumentException($"'{method}' is not a prompt-learning method; use prompt, p-tuning or prefix.", nameof(method)),
    };

    /// <summary>Reads adapter_config.json of a prompt-learning adapter.</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is not a prompt-learning type, or a field is bad (named).</exception>
    public static new PromptLearningConfig Load(string path) => ConfigJson.Read(path, Types, (type, root) => WithCommon(new PromptLearningConfig(type)
    {
        NumVirtualTokens = ConfigJson.Int(root, "num_virtual_tokens") ?? throw new InvalidDataException("\"num_virtual_tokens\" is missing."),
        TokenDim = ConfigJson.Int(root, "token_dim"),
        NumTransformerSubmodules = ConfigJson.Int(root, "num_transformer_submodules"),
        NumAttentionHeads = ConfigJson.Int(root, "num_attention_heads"),
        NumLayers = ConfigJson.Int(root, "num_layers"),
        PromptTuningInit = ParseInit(ConfigJson.Str(root, "prompt_tuning_init")),
        PromptTuningInitText = ConfigJson.Str(root, "prompt_tuning_init_text"),
        TokenizerNameOrPath = ConfigJson.Str(root, "tokenizer_name_or_path"),
        EncoderReparameterizationType = ConfigJson.Str(root, "encoder_reparameterization_type") ?? "MLP",
        EncoderHiddenSize = ConfigJson.Int(root, "encoder_hidden_size"),
        EncoderNumLayers = ConfigJson.Int(root, "encoder_num_layers") ?? 2,
        EncoderDropout = ConfigJson.Num(root, "encoder_dropout") ?? 0,
        PrefixProjection = ConfigJson.Bool(root, "prefix_projection") ?? false,
        InitWeights = ConfigJson.Str(root, "init_weights"),
    }, root));

    /// <inheritdoc/>
    public override void Validate()
    {
        if (!Types.Contains(Type))
        {
            throw new ArgumentException($"peft_type \"{Type}\" is not a prompt-learning type; expected {string.Join(", ", Types)}.");
        }

        if (NumVirtualTokens <= 0)
        {
            throw new ArgumentException($"num_virtual_tokens must be positive; got {NumVirtualTokens}.");
        }

        if (NumTransformerSubmodules is { } sub && sub != 1)
        {
            throw new ArgumentException($"num_transformer_submodules is {sub}; a decoder-only causal LM has 1 (encoder-decoder prompts are not supported).");
        }

        foreach (var (name, value) in new[] { ("token_dim", TokenDim), ("num_attention_heads", NumAttentionHeads), ("num_layers", NumLayers), ("encoder_hidden_size", EncoderHiddenSize) })
        {
            if (value is <= 0)
            {
                throw new ArgumentException($"{name} must be positive; got {value}.");
            }
        }

        if (Type == PTuningType && EncoderReparameterizationType is not ("MLP" or "LSTM"))
        {
            throw new ArgumentException($"encoder_reparameterization_type must be \"MLP\" or \"LSTM\"; got \"{EncoderReparameterizationType}\".");
        }

        if (Type == PTuningType && !(EncoderDropout >= 0 && EncoderDropout < 1))
        {
            throw new ArgumentException($"encoder_dropout must be in [0, 1); got {EncoderDropout}.");
        }

        if (Type == PrefixTuningType && InitWeights is not (null or "zero"))
        {
            throw new ArgumentException($"init_weights must be null or \"zero\"; got \"{InitWeights}\".");
        }

        if (Type == PromptTuningType && PromptTuningInit == PromptTuningInit.Text && string.IsNullOrEmpty(PromptTuningInitText))
        {
            throw new ArgumentException("prompt_tuning_init is TEXT but prompt_tuning_init_text is empty.");
        }
    }

    /// <summary>The PEFT spelling of an init (RANDOM, SAMPLE_VOCAB, TEXT).</summary>
    public static string InitName(PromptTuningInit init) => init switch
    {
        PromptTuningInit.SampleVocab => "SAMPLE_VOCAB",
        PromptTuningInit.Text => "TEXT",
        _ => "RANDOM",
    };

    /// <inheritdoc/>
    private protected override void AddFields(SortedDictionary<string, Action<Utf8JsonWriter>> fields)
    {
        fields["num_virtual_tokens"] = json => json.WriteNumberValue(NumVirtualTokens);
        fields["token_dim"] = json => WriteInt(json, TokenDim);
        fields["num_transformer_submodules"] = json => WriteInt(json, NumTransformerSubmodules);
        fields["num_attention_heads"] = json => WriteInt(json, NumAttentionHeads);
        fields["num_layers"] = json => WriteInt(json, NumLayers);
        switch (Type)
        {
            case PromptTuningType:
                fields["prompt_tuning_init"] = json => json.WriteStringValue(InitName(PromptTuningInit));
                fields["prompt_tuning_init_text"] = json => ConfigJson.WriteString(json, PromptTuningInitText);
                fields["tokenizer_name_or_path"] = json => ConfigJson.WriteString(json, TokenizerNameOrPath);
                fields["tokenizer_kwargs"] = json => json.WriteNullValue();
                break;
            case PTuningType:
                fields["encoder_reparameterization_type"] = json => json.WriteStringValue(EncoderReparameterizationType);
                fields["encoder_hidden_size"] = json => WriteInt(json, EncoderHiddenSize);
                fields["encoder_num_layers"] = json => json.WriteNumberValue(EncoderNumLayers);
                fields["encoder_dropout"] = json => json.WriteRawValue(ConfigJson.PythonFloat(EncoderDropout));
                break;
            default:
                fields["encoder_hidden_size"] = json => WriteInt(json, EncoderHiddenSize);
                fields["prefix_projection"] = json => json.WriteBooleanValue(PrefixProjection);
                fields["init_weights"] = json => ConfigJson.WriteString(json, InitWeights);
                break;
        }
    }

    private static void WriteInt(Utf8JsonWriter json, int? value)
    {
        if (value is { } v)
        {
            json.WriteNumberValue(v);
        }
        else
        {
            json.WriteNullValue();
        }
    }

    private static PromptTuningInit ParseInit(string? name) => name switch
    {
        null or "RANDOM" => PromptTuningInit.Random,
        "SAMPLE_VOCAB" => PromptTuningInit.SampleVocab,
        "TEXT" => PromptTuningInit.Text,
        _ => throw new InvalidDataException($"\"prompt_tuning_init\" must be RANDOM, SAMPLE_VOCAB or TEXT; it is \"{name}\"."),
    };
}
