// AdapterFusion over frozen bottleneck adapters (docs/formats/bottleneck-adapters.md#fuse). At a site
// with query input z (the last fused adapter's input) and each adapter's output u_i = A_i(·):
//   p_i = softmax_i((Q z + b_q)·(K u_i + b_k) / T),   Δ = Σ_i p_i·V u_i   (the site adds Δ to its residual)
// Q, K [H, H] with biases, V [H, H] without (AdapterHub's query/key/value; "dynamic" config), V
// initialised to the identity, Q and K to N(0, 0.02²); T = 1 (AdapterHub's temperature: false). Training
// adds 0.01·‖I − V‖²_F per fusion layer to the loss (regularization: true). Parameter names:
// adapter_fusion_layer.{a,b}.query.weight / .query.bias / .key.weight / .key.bias / .value.weight.
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>AdapterHub's fusion config (only the settings this library implements are accepted).</summary>
/// <param name="Value">A value matrix V (dynamic fusion); false: Δ = Σ p_i·u_i (static fusion).</param>
/// <param name="Regularization">Add 0.01·‖I − V‖²_F to the training loss.</param>
/// <param name="QueryBeforeLn">The query is the sublayer output c itself, not the adapter's input (matters for original_ln_before adapters).</param>
/// <param name="ValueInitialized">V starts as the identity (else N(0, 0.02²)).</param>
public sealed record AdapterFusionConfig(bool Value = true, bool Regularization = true, bool QueryBeforeLn = false, bool ValueInitialized = true)
{
    /// <summary>AdapterHub's "dynamic" fusion (the default).</summary>
    public static AdapterFusionConfig Dynamic() => new();

    /// <summary>AdapterHub's "static" fusion (no value matrix, no regularization).</summary>
    public static AdapterFusionConfig Static() => new(Value: false, Regularization: false, ValueInitialized: false);
}

/// <summary>One fusion layer at one site (query, key, value projections).</summary>
public sealed class AdapterFusionLayer : Module
{
    private readonly NamedModule query;
    private readonly NamedModule key;
    private readonly NamedModule? value;

    internal AdapterFusionLayer(AdapterFusionConfig config, int hidden, Random rng, bool trainable)
    {
        Config = config;
        float[] Normal(int count) => [.. Enumerable.Range(0, count).Select(_ => (float)(0.02 * BottleneckLayer.Normal(rng)))];
        QueryWeight = new Parameter(Normal(hidden * hidden), [hidden, hidden], trainable);
        QueryBias = new Parameter(new float[hidden], [hidden], trainable);
        KeyWeight = new Parameter(Normal(hidden * hidden), [hidden, hidden], trainable);
        KeyBias = new Parameter(new float[hidden], [hidden], trainable);
        query = new NamedModule().Parameter("weight", QueryWeight).Parameter("bias", QueryBias);
        key = new NamedModule().Parameter("weight", KeyWeight).Parameter("bias", KeyBias);
        if (config.Value)
        {
            var v = config.ValueInitialized ? new float[hidden * hidden] : Normal(hidden * hidden);
            if (config.ValueInitialized)
            {
                for (int i = 0; i < hidden; i++)
                {
                    v[(i * hidden) + i] = 1f;
                }
            }

            ValueWeight = new Parameter(v, [hidden, hidden], trainable);
            value = new NamedModule().Parameter("weight", ValueWeight);
        }
    }

    /// <summary>The fusion config.</summary>
    public AdapterFusionConfig Config { get; }

    /// <summary>query.weight [H, H].</summary>
    public Parameter QueryWeight { get; }

    /// <summary>query.bias [H].</summary>
    public Parameter QueryBias { get; }

    /// <summary>key.weight [H, H].</summary>
    public Parameter KeyWeight { get; }

    /// <summary>key.bias [H].</summary>
    public Parameter KeyBias { get; }

    /// <summary>value.weight [H, H] (dynamic fusion), or null.</summary>
    public Parameter? ValueWeight { get; }

    /// <summary>Δ = Σ_i softmax_i((Q z + b_q)·(K u_i + b_k))·V u_i for the query input z and the adapter outputs u_i.</summary>
    public Tensor Forward(Tensor z, IReadOnlyList<Tensor> outputs, ForwardContext context)
    {
        ArgumentNullException.ThrowIfNull(outputs);
        ArgumentNullException.ThrowIfNull(context);
        var q = Functional.Gemm(z, QueryWeight, QueryBias, context.Kernel);
        var keys = outputs.Select(u => Functional.Gemm(u, KeyWeight, KeyBias, context.Kernel)).ToList();
        var values = ValueWeight == null ? outputs : [.. outputs.Select(u => Functional.Gemm(u, ValueWeight, null, context.Kernel))];
        return Functional.FusionMix(q, keys, values);
    }

    /// <summary>0.01·‖I − V‖²_F, or null without a trainable V or without regularization.</summary>
    public Tensor? RegularizationLoss() =>
        Config.Regularization && ValueWeight is { Trainable: true } v
            ? Functional.Scale(Functional.FusionRegularization(v), new Tensor([0.01f], 1))
            : null;

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() =>
        value == null ? [("query", query), ("key", key)] : [("query", query), ("key", key), ("value", value)];
}
