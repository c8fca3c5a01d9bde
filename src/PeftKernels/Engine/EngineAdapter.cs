// One loaded version of a PEFT adapter in the form the engine's batched forward consumes: per decoder
// layer l and projection p ∈ {q, k, v, o, gate, up, down}, nothing or one AdapterModule. For x [in] and
// the base layer y₀ = x·Wᵀ (W [out, in], any storage) with base bias b [out] (or 0):
//   LoRA   y = y₀ + b + s·(B·(A·x) + β)         A [r, in], B [out, r], s = α/r (rsLoRA α/√r, as
//                                               LoraAdapter.Scale), β = PEFT's lora_bias [out] or 0
//                                               (added scaled, as LoraAdapter and merging do)
//   DoRA   y = g ⊙ y₀ + s·B'·(A·x) + b          g = m / ‖W + s·B·A‖_row [out], the row norms computed
//                                               at load exactly as Linear.WeightNorms (dequantized 4-bit
//                                               rows included), B' = diag(g)·B; inference only (no
//                                               dropout, so PEFT's DoRA and this agree exactly); b is not scaled
//   IA³    feed-forward (input scaling)   y = (x ⊙ l)·Wᵀ + b     l [in]
//          otherwise (output scaling)     y = (x·Wᵀ + b) ⊙ l     l [out] (the bias is scaled too, as PEFT)
// See docs/formats/methods.md (LoRA, DoRA, IA³). A MixLoRA adapter holds its attention LoRA as LoRA modules
// here and its routed MLP experts in EngineMixLora.cs (docs/formats/mixlora.md#serving). A version never changes once built: replacing an adapter
// builds a new version, and sequences holding the old one keep reading it.
namespace PeftKernels.Engine;

/// <summary>The method of an engine adapter.</summary>
public enum AdapterKind
{
    /// <summary>LoRA (incl. rsLoRA and lora_bias): y = x·Wᵀ + b + s·(B·A·x + β).</summary>
    Lora,

    /// <summary>DoRA with its column factor folded in: y = g ⊙ (x·Wᵀ) + s·B'·A·x + b.</summary>
    Dora,

    /// <summary>IA³: input scaling (feed-forward modules) or output scaling.</summary>
    Ia3,

    /// <summary>Prompt, P- or prefix tuning: no projection changes; the sequence's first N cache positions hold the adapter's virtual keys and values.</summary>
    PromptLearning,
    /// <summary>Bottleneck adapters or their composition at the decoder layers' residual sites (no projection modules).</summary>
    Bottleneck,

    /// <summary>MixLoRA: LoRA modules on the attention projections; each layer's MLP output replaced by the routed expert mixture (EngineMixLora).</summary>
    MixLora,

    /// <summary>X-LoRA: frozen LoRA experts mixed per token by a classifier over a base (scaling) pass; a second, paged cache per sequence (no projection modules).</summary>
    XLora,
}

/// <summary>The projections of a Llama decoder layer an engine adapter can sit on.</summary>
public enum Projection
{
    /// <summary>self_attn.q_proj.</summary>
    Q,

    /// <summary>self_attn.k_proj.</summary>
    K,

    /// <summary>self_attn.v_proj.</summary>
    V,

    /// <summary>self_attn.o_proj.</summary>
    O,

    /// <summary>mlp.gate_proj.</summary>
    Gate,

    /// <summary>mlp.up_proj.</summary>
    Up,

    /// <summary>mlp.down_proj.</summary>
    Down,
}

/// <summary>An adapter's factors on one projection of one decoder layer (immutable; see the file header for the equations).</summary>
public sealed class AdapterModule
{
    private readonly float[]? a, b, loraBias, columnScale, ia3;

    internal AdapterModule(int layer, Projection projection, int inFeatures, int outFeatures, AdapterKind kind,
        float[]? a = null, float[]? b = null, float scale = 0, float[]? loraBias = null, float[]? columnScale = null, float[]? ia3 = null, bool ia3Feedforward = false)
    {
        Layer = layer;
        Projection = projection;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Kind = kind;
        this.a = a;
        this.b = b;
        Scale = scale;
        this.loraBias = loraBias;
        this.columnScale = columnScale;
        this.ia3 = ia3;
        Ia3Feedforward = ia3Feedforward;
        Rank = a == null ? 0 : a.Length / inFeatures;
    }

    /// <summary>Decoder layer index.</summary>
    public int Layer { get; }

    /// <summary>Which projection of the layer.</summary>
    public Projection Projection { get; }

    /// <summary>in_features of the projection.</summary>
    public int InFeatures { get; }

    /// <summary>out_features of the projection.</summary>
    public int OutFeatures { get; }

    /// <summary>LoRA, DoRA or IA³.</summary>
    public AdapterKind Kind { get; }

    /// <summary>The rank r (0 for IA³).</summary>
    public int Rank { get; }

    /// <summary>LoRA/DoRA: A [r, in], row-major (empty for IA³).</summary>
    public ReadOnlyMemory<float> A => a;

    /// <summary>LoRA: B [out, r]; DoRA: B' = diag(g)·B [out, r] (empty for IA³).</summary>
    public ReadOnlyMemory<float> B => b;

    /// <summary>LoRA/DoRA: the scale s (α/r, or α/√r with rsLoRA); 0 for IA³.</summary>
    public float Scale { get; }

    /// <summary>LoRA: lora_bias β [out], added as s·β; empty when the adapter has none.</summary>
    public ReadOnlyMemory<float> LoraBias => loraBias;

    /// <summary>DoRA: the column factor g = m / ‖W + s·B·A‖_row [out] multiplying x·Wᵀ; empty otherwise.</summary>
    public ReadOnlyMemory<float> ColumnScale => columnScale;

    /// <summary>IA³: the vector l ([in] when <see cref="Ia3Feedforward"/>, else [out]); empty otherwise.</summary>
    public ReadOnlyMemory<float> Ia3 => ia3;

    /// <summary>IA³: true when l scales the input (feed-forward modules), false when it scales the output (bias included).</summary>
    public bool Ia3Feedforward { get; }

    /// <summary>Bytes of the arrays this module holds.</summary>
    public long Bytes => 4L * ((a?.Length ?? 0) + (b?.Length ?? 0) + (loraBias?.Length ?? 0) + (columnScale?.Length ?? 0) + (ia3?.Length ?? 0));
}

/// <summary>
/// One loaded version of a PEFT adapter (LoRA, DoRA or IA³) as the engine's batched forward consumes it: per decoder layer and
/// <see cref="Projection"/>, nothing or one <see cref="AdapterModule"/>. Immutable once built.
/// </summary>
public sealed partial class EngineAdapter
{
    private readonly AdapterModule?[] modules;

    /// <summary>The fp32 bytes of the parameters <paramref name="twin"/> holds beyond the base parameters it shares with <paramref name="model"/>.</summary>
    internal static long TwinBytes(Models.LlamaForCausalLM model, Models.LlamaForCausalLM twin)
    {
        var shared = new HashSet<Parameter>(model.NamedParameters().Select(p => p.Parameter), ReferenceEqualityComparer.Instance);
        return 4L * twin.NamedParameters().Where(p => !shared.Contains(p.Parameter)).Sum(p => (long)p.Parameter.Count);
    }

    internal EngineAdapter(string name, int version, string sourceFolder, AdapterKind kind, int layers, IEnumerable<AdapterModule> parts, long extraBytes = 0)
    {
        Name = name;
        Version = version;
        SourceFolder = sourceFolder;
        Kind = kind;
        Layers = layers;
        modules = new AdapterModule?[layers * ProjectionCount];
        foreach (var m in parts)
        {
            modules[(m.Layer * ProjectionCount) + (int)m.Projection] = m;
        }

        Modules = [.. modules.OfType<AdapterModule>()];
        Bytes = Modules.Sum(m => m.Bytes) + extraBytes;
        MaxRank = Modules.Count == 0 ? 0 : Modules.Max(m => m.Rank);
    }

    /// <summary>Number of projections per decoder layer (the values of <see cref="Projection"/>).</summary>
    public const int ProjectionCount = 7;

    /// <summary>The adapter's name in the registry.</summary>
    public string Name { get; }

    /// <summary>The version under that name: 1 for the first load, +1 per replace or reload (never reused by a registry).</summary>
    public int Version { get; }

    /// <summary>The adapter folder it was read from (full path, links resolved when the registry confines paths).</summary>
    public string SourceFolder { get; }

    /// <summary>LoRA, DoRA, IA³, or a whole-model kind (prompt learning, bottleneck, MixLoRA).</summary>
    public AdapterKind Kind { get; }

    /// <summary>Number of decoder layers of the model it was built for.</summary>
    public int Layers { get; }

    /// <summary>The modules it has, ordered by layer then projection.</summary>
    public IReadOnlyList<AdapterModule> Modules { get; }

    /// <summary>
    /// Bytes held by the factors, plus what a whole-model adapter holds beside them (MixLoRA's routers and experts, bottleneck
    /// layers, X-LoRA's classifier and experts, prompt learning's virtual keys and values): what the registry's memory budget counts.
    /// </summary>
    public long Bytes { get; }

    /// <summary>The largest rank over its modules (0 for IA³).</summary>
    public int MaxRank { get; }

    /// <summary>The module on <paramref name="projection"/> of decoder layer <paramref name="layer"/>, or null.</summary>
    public AdapterModule? Get(int layer, Projection projection)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, Layers);
        return modules[(layer * ProjectionCount) + (int)projection];
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} v{Version} ({Kind}, {Modules.Count} modules, {Bytes} bytes)";
}
