// A prompt-tuning, P-tuning or prefix-tuning adapter attached to a whole model (docs/formats/prompt-learning.md).
// Its virtual rows R [N, W] depend only on the adapter:
//   prompt tuning:            R = the table E [N, H]
//   P-tuning (MLP):           R = L3(relu(L2(relu(L1(E))))), E [N, H], L1: H→h, L2: h→h, L3: h→H
//   prefix tuning:            R = E [N, 2·L·kvDim]
//   prefix with projection:   R = L2(tanh(L1(E))), E [N, kvDim], L1: kvDim→h, L2: h→2·L·kvDim
// Prompt / P-tuning put R before the token embeddings; prefix tuning splits R into each layer's keys and values
// (columns ((2l + s)·kvHeads + h)·headDim + e, s = 0 keys, 1 values). Saving runs the encoder once and writes R as the
// single tensor prompt_embeddings, so a loaded adapter is always a plain table. Nothing merges into the base weights.
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft;

/// <summary>Prompt tuning, P-tuning or prefix tuning on a <see cref="LlamaForCausalLM"/>; create with <see cref="Attach"/>, read with <see cref="Load"/>.</summary>
public sealed partial class PromptLearningAdapter : Module, IModelAdapter
{
    /// <summary>The single tensor of adapter_model.safetensors.</summary>
    public const string TensorName = "prompt_embeddings";

    private readonly Parameter embedding;
    private readonly Linear[] encoder;

    private PromptLearningAdapter(LlamaForCausalLM model, PromptLearningConfig config, Parameter embedding, Linear[] encoder)
    {
        Model = model;
        Config = config;
        this.embedding = embedding;
        this.encoder = encoder;
    }

    /// <summary>The config, its model fields filled (token_dim, num_attention_heads, num_layers).</summary>
    public PromptLearningConfig Config { get; }

    /// <inheritdoc/>
    public LlamaForCausalLM Model { get; }

    /// <inheritdoc/>
    public string Method => Config.Method;

    /// <summary>False: virtual tokens and prefixes add positions; there is no weight delta to merge.</summary>
    public bool CanMerge => false;

    /// <inheritdoc/>
    public IEnumerable<Parameter> Parameters => NamedParameters().Select(p => p.Parameter);

    /// <summary>N, the virtual positions before every sequence.</summary>
    public int NumVirtualTokens => Config.NumVirtualTokens;

    /// <summary>True for prefix tuning (per-layer keys and values), false for prompt / P-tuning (virtual input embeddings).</summary>
    public bool IsPrefix => Config.Type == PromptLearningConfig.PrefixTuningType;

    /// <summary>W, the width of a virtual row: hidden for prompt / P-tuning, 2·layers·kvHeads·headDim for prefix tuning.</summary>
    public int RowWidth => IsPrefix ? 2 * Model.Config.NumHiddenLayers * KvDim : Model.Config.HiddenSize;

    private int KvDim => Model.Config.NumKeyValueHeads * Model.Config.HeadDim;

    /// <summary>
    /// Creates a trainable adapter on <paramref name="model"/> (whose own parameters are frozen) and attaches it. The config's model
    /// fields are filled from the model: token_dim = hidden (prompt / P-tuning) or kvHeads·headDim (prefix), num_attention_heads =
    /// heads or kvHeads, num_layers, encoder_hidden_size defaulting to token_dim.
    /// </summary>
    /// <param name="model">The base model.</param>
    /// <param name="config">The method and its options.</param>
    /// <param name="seed">Seed of the random init.</param>
    /// <param name="initTokenIds">TEXT init: the token ids of prompt_tuning_init_text (BOS included, as the tokenizer gives them).</param>
    /// <exception cref="NotSupportedException">P-tuning with LSTM reparameterization, or a model already holding a prompt-learning adapter.</exception>
    public static PromptLearningAdapter Attach(LlamaForCausalLM model, PromptLearningConfig config, int seed = 0, IReadOnlyList<int>? initTokenIds = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config = WithModelFields(model, config);
        config.Validate();
        if (config.Type == PromptLearningConfig.PTuningType && config.EncoderReparameterizationType != "MLP")
        {
            throw new NotSupportedException($"P-tuning with encoder_reparameterization_type \"{config.EncoderReparameterizationType}\" cannot be trained here: only the MLP encoder is implemented (an LSTM-trained P-tuning folder still loads, its prompt_embeddings being folded).");
        }

        if (config.EncoderDropout != 0)
        {
            throw new NotSupportedException($"encoder_dropout {config.EncoderDropout} is not supported; use 0.");
        }

        var rng = new Random(seed);
        int n = config.NumVirtualTokens, tokenDim = config.TokenDim!.Value, h = config.EncoderHiddenSize ?? tokenDim;
        var c = model.Config;
        Parameter table;
        Linear[] encoder = [];
        switch (config.Type)
        {
            case PromptLearningConfig.PromptTuningType:
                table = new Parameter(InitialPrompt(model, config, rng, initTokenIds), [n, tokenDim], trainable: true);
                break;
            case PromptLearningConfig.PTuningType:
                table = new Parameter(Normal(rng, n * tokenDim, 1f), [n, tokenDim], trainable: true);
                encoder = [MakeLinear(rng, tokenDim, h, false), MakeLinear(rng, h, h, false), MakeLinear(rng, h, tokenDim, false)];
                break;
            default:
                bool zero = config.InitWeights == "zero";
                int width = 2 * c.NumHiddenLayers * tokenDim;
                if (config.PrefixProjection)
                {
                    table = new Parameter(Normal(rng, n * tokenDim, 1f), [n, tokenDim], trainable: true);
                    encoder = [MakeLinear(rng, tokenDim, h, false), MakeLinear(rng, h, width, zero)];
                }
                else
                {
                    table = new Parameter(zero ? new float[n * width] : Normal(rng, n * width, 1f), [n, width], trainable: true);
                }

                break;
        }

        model.Freeze();
        var adapter = new PromptLearningAdapter(model, config, table, encoder);
        adapter.Hook();
        return adapter;
    }

    /// <summary>Reads a PEFT prompt-learning folder (adapter_config.json + adapter_model.safetensors) onto <paramref name="model"/>, strictly.</summary>
    /// <exception cref="InvalidDataException">A file is missing or bad, or the adapter was made for another model (field or tensor named, expected vs actual).</exception>
    public static PromptLearningAdapter Load(LlamaForCausalLM model, string folder, bool trainable = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        var (config, rows) = PromptLearningFiles.Read(model, folder);
        var table = new Parameter(rows, [config.NumVirtualTokens, rows.Length / config.NumVirtualTokens], trainable);
        if (trainable)
        {
            model.Freeze();
        }

        var adapter = new PromptLearningAdapter(model, config, table, []);
        adapter.Hook();
        return adapter;
    }

    /// <summary>The virtual rows R [N, W] through the autograd (the encoder runs when the adapter has one).</summary>
    public Tensor VirtualRows(ForwardContext? context = null)
    {
        if (encoder.Length == 0)
        {
            return embedding;
        }

        context ??= ForwardContext.Default;
        Tensor x = embedding;
        for (int i = 0; i < encoder.Length; i++)
        {
            x = encoder[i].Forward(x, context);
            if (i < encoder.Length - 1)
            {
                x = IsPrefix ? Functional.Tanh(x) : Functional.Relu(x);
            }
        }

        return x;
    }

    /// <summary>prompt_embeddings as saved: R [N, W] computed without gradients, row-major.</summary>
    public float[] PromptEmbeddings()
    {
        using var scope = Tape.NoGrad();
        return [.. VirtualRows().Data];
    }

    /// <inheritdoc/>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        Config.Validate();
        Directory.CreateDirectory(folder);
        var rows = PromptEmbeddings();
        SafeTensorsWriter.Write(Path.Combine(folder, Lora.WeightsFile), [SafeTensor.FromFloat32(TensorName, rows, NumVirtualTokens, RowWidth)],
            new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(Path.Combine(folder, Lora.ConfigFile));
    }

    /// <summary>Always refused: prompt learning adds virtual positions, not a weight delta, so there is nothing to merge (<see cref="CanMerge"/> is false).</summary>
    /// <exception cref="NotSupportedException">Always.</exception>
    public void Merge() =>
        throw new NotSupportedException($"{Method} adapters do not merge into the base weights: they add {NumVirtualTokens} virtual positions before every sequence, not a weight delta; keep the adapter attached (or serve it with --adapter).");

    /// <inheritdoc/>
    public void Detach()
    {
        if (ReferenceEquals(Model.PromptLearning, this))
        {
            Model.PromptLearning = null;
        }

        foreach (var layer in Model.Model.Layers)
        {
            if (ReferenceEquals(layer.SelfAttn.Prefix, this))
            {
                layer.SelfAttn.Prefix = null;
            }
        }
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters() => [("embedding.weight", embedding)];

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        encoder.Select((l, i) => ((IsPrefix ? "transform." : "mlp_head.") + (2 * i).ToString(System.Globalization.CultureInfo.InvariantCulture), (Module)l));

    /// <summary>The config with token_dim, num_attention_heads, num_layers and encoder_hidden_size filled from the model.</summary>
    internal static PromptLearningConfig WithModelFields(LlamaForCausalLM model, PromptLearningConfig config)
    {
        var c = model.Config;
        bool prefix = config.Type == PromptLearningConfig.PrefixTuningType;
        int tokenDim = prefix ? c.NumKeyValueHeads * c.HeadDim : c.HiddenSize;
        return config with
        {
            TokenDim = tokenDim,
            NumAttentionHeads = prefix ? c.NumKeyValueHeads : c.NumAttentionHeads,
            NumLayers = c.NumHiddenLayers,
            NumTransformerSubmodules = 1,
            EncoderHiddenSize = config.Type == PromptLearningConfig.PromptTuningType ? config.EncoderHiddenSize : config.EncoderHiddenSize ?? tokenDim,
        };
    }

    private void Hook()
    {
        if (Model.PromptLearning != null)
        {
            throw new NotSupportedException($"the model already has a {Model.PromptLearning.Method} adapter attached; Detach() it first (one prompt-learning adapter at a time).");
        }

        Model.PromptLearning = this;
        if (IsPrefix)
        {
            foreach (var layer in Model.Model.Layers)
            {
                layer.SelfAttn.Prefix = this;
            }
        }

        Model.SyncDevice(refresh: false); // a model on a GPU device gets the table and encoder there
    }

    private static float[] InitialPrompt(LlamaForCausalLM model, PromptLearningConfig config, Random rng, IReadOnlyList<int>? initTokenIds)
    {
        int n = config.NumVirtualTokens, hidden = model.Config.HiddenSize, vocab = model.Config.VocabSize;
        int[] ids;
        switch (config.PromptTuningInit)
        {
            case PromptTuningInit.SampleVocab:
                ids = [.. Enumerable.Range(0, n).Select(_ => rng.Next(vocab))];
                break;
            case PromptTuningInit.Text:
                if (initTokenIds == null || initTokenIds.Count == 0)
                {
                    throw new ArgumentException("prompt_tuning_init TEXT needs the token ids of prompt_tuning_init_text (initTokenIds); none were given.", nameof(initTokenIds));
                }

                // Cut to N, or repeated until N (PEFT's rule).
                ids = [.. Enumerable.Range(0, n).Select(i => initTokenIds[i % initTokenIds.Count])];
                break;
            default:
                return Normal(rng, n * hidden, 1f);
        }

        var bad = ids.FirstOrDefault(id => (uint)id >= (uint)vocab, -1);
        if (bad != -1)
        {
            throw new ArgumentOutOfRangeException(nameof(initTokenIds), $"init token id {bad} is outside the vocabulary [0, {vocab}).");
        }

        var weights = model.Model.EmbedTokens.Weight.ToFloat32();
        var rows = new float[n * hidden];
        for (int i = 0; i < n; i++)
        {
            weights.AsSpan(ids[i] * hidden, hidden).CopyTo(rows.AsSpan(i * hidden, hidden));
        }

        return rows;
    }

    /// <summary>A Linear in → out with PyTorch's default init, U(±1/√in) for weight and bias (zeros when <paramref name="zero"/>).</summary>
    private static Linear MakeLinear(Random rng, int inFeatures, int outFeatures, bool zero)
    {
        float bound = 1f / MathF.Sqrt(inFeatures);
        float[] Uniform(int count) => zero ? new float[count] : [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * bound))];
        return new Linear(new Parameter(Uniform(outFeatures * inFeatures), [outFeatures, inFeatures], trainable: true),
            new Parameter(Uniform(outFeatures), [outFeatures], trainable: true));
    }

    private static float[] Normal(Random rng, int count, float std)
    {
        var data = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = (float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }

        return data;
    }
}
