// The configuration of one bottleneck adapter, AdapterHub's BnConfig (docs/formats/bottleneck-adapters.md#config):
//   A(z) = s·(W_up·f(W_down·z + b_down) + b_up),  W_down [m, H], W_up [H, m], m = max(1, ⌊H / reduction_factor⌋)
// and where it sits in a decoder layer: mh_adapter (after attention), output_adapter (after the MLP),
// is_parallel (input = the sublayer's input) or sequential (input = the sublayer's output, plus the
// residual when original_ln_before). The fields AdapterHub has but this library does not implement
// (adapter layer norms, gating, PHM layers, invertible adapters, dropout, stochastic depth) must keep
// their defaults: a config that sets one is refused by name.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>How a bottleneck adapter's output is scaled (AdapterHub's <c>scaling</c>).</summary>
public enum BottleneckScalingKind
{
    /// <summary>A fixed float.</summary>
    Constant,

    /// <summary>"learned": one trainable scalar, initialised to 1.</summary>
    Learned,

    /// <summary>"channel": one trainable factor per hidden channel, initialised to 1.</summary>
    Channel,
}

/// <summary>One bottleneck adapter's architecture (AdapterHub's BnConfig; presets <see cref="Houlsby"/>, <see cref="Pfeiffer"/>, <see cref="Parallel"/>).</summary>
public sealed record BottleneckConfig
{
    /// <summary>The activation names accepted in <see cref="NonLinearity"/>.</summary>
    public static readonly IReadOnlyList<string> NonLinearities = ["relu", "swish", "silu", "tanh"];

    /// <summary>The init schemes accepted in <see cref="InitWeights"/>.</summary>
    public static readonly IReadOnlyList<string> InitSchemes = ["bert", "houlsby", "mam_adapter"];

    /// <summary>An adapter after the attention block (mh_adapter).</summary>
    public bool MhAdapter { get; init; }

    /// <summary>An adapter after the MLP (output_adapter).</summary>
    public bool OutputAdapter { get; init; } = true;

    /// <summary>H / m (reduction_factor), &gt; 0.</summary>
    public double ReductionFactor { get; init; } = 16;

    /// <summary>The bottleneck's non-linearity: relu, swish (= silu) or tanh.</summary>
    public string NonLinearity { get; init; } = "relu";

    /// <summary>Sequential adapters: the input is the sublayer output plus its residual (original_ln_before).</summary>
    public bool OriginalLnBefore { get; init; }

    /// <summary>Parallel adapter: the input is the sublayer's input (is_parallel).</summary>
    public bool IsParallel { get; init; }

    /// <summary>Scaling kind ("learned", "channel" or a float).</summary>
    public BottleneckScalingKind ScalingKind { get; init; } = BottleneckScalingKind.Constant;

    /// <summary>The constant scaling factor (used when <see cref="ScalingKind"/> is Constant).</summary>
    public double Scaling { get; init; } = 1.0;

    /// <summary>bert (N(0, 0.02), zero biases), houlsby (truncated N(0, 0.01)) or mam_adapter (W_up = 0: the identity at start).</summary>
    public string InitWeights { get; init; } = "bert";

    /// <summary>The layers (from 0) without an adapter (leave_out).</summary>
    public IReadOnlyList<int> LeaveOut { get; init; } = [];

    /// <summary>Value equality, <see cref="LeaveOut"/> compared element by element.</summary>
    public bool Equals(BottleneckConfig? other) =>
        other is not null && MhAdapter == other.MhAdapter && OutputAdapter == other.OutputAdapter && ReductionFactor.Equals(other.ReductionFactor)
        && NonLinearity == other.NonLinearity && OriginalLnBefore == other.OriginalLnBefore && IsParallel == other.IsParallel
        && ScalingKind == other.ScalingKind && (ScalingKind != BottleneckScalingKind.Constant || Scaling.Equals(other.Scaling)) && InitWeights == other.InitWeights && LeaveOut.SequenceEqual(other.LeaveOut);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(MhAdapter, OutputAdapter, ReductionFactor, NonLinearity, IsParallel, ScalingKind, InitWeights);

    /// <summary>Houlsby et al. (double_seq_bn): after attention and after the MLP, swish, reduction 16.</summary>
    public static BottleneckConfig Houlsby() => new() { MhAdapter = true, OutputAdapter = true, NonLinearity = "swish" };

    /// <summary>Pfeiffer et al. (seq_bn): after the MLP only, relu, reduction 16, input = output + residual.</summary>
    public static BottleneckConfig Pfeiffer() => new() { OriginalLnBefore = true };

    /// <summary>He et al. (par_bn): after the MLP, in parallel with it, relu, reduction 2, scaling 4, mam_adapter init.</summary>
    public static BottleneckConfig Parallel() => new() { ReductionFactor = 2, IsParallel = true, Scaling = 4.0, InitWeights = "mam_adapter" };

    /// <summary>The preset of this name: houlsby / double_seq_bn, pfeiffer / seq_bn, parallel / par_bn.</summary>
    /// <exception cref="ArgumentException">An unknown name.</exception>
    public static BottleneckConfig Preset(string name) => name switch
    {
        "houlsby" or "double_seq_bn" => Houlsby(),
        "pfeiffer" or "seq_bn" => Pfeiffer(),
        "parallel" or "par_bn" => Parallel(),
        _ => throw new ArgumentException($"unknown bottleneck config '{name}'; use houlsby (double_seq_bn), pfeiffer (seq_bn) or parallel (par_bn).", nameof(name)),
    };

    /// <summary>The activation kind of <see cref="NonLinearity"/>.</summary>
    public ActivationKind Activation => NonLinearity.ToLowerInvariant() switch
    {
        "relu" => ActivationKind.Relu,
        "swish" or "silu" => ActivationKind.Silu,
        "tanh" => ActivationKind.Tanh,
        _ => throw new ArgumentException($"non_linearity '{NonLinearity}' is not supported; use {string.Join(", ", NonLinearities)}."),
    };

    /// <summary>The bottleneck width m for hidden size <paramref name="hidden"/>.</summary>
    public int Width(int hidden) => Math.Max(1, (int)(hidden / ReductionFactor));

    /// <summary>True when layer <paramref name="layer"/> has an adapter at the attention (or output) site.</summary>
    public bool HasSite(int layer, bool attention) => (attention ? MhAdapter : OutputAdapter) && !LeaveOut.Contains(layer);

    /// <summary>Checks the values (called by Attach and by the loader).</summary>
    /// <exception cref="ArgumentException">A bad value, named.</exception>
    public void Validate()
    {
        if (!(ReductionFactor > 0) || !double.IsFinite(ReductionFactor))
        {
            throw new ArgumentException($"reduction_factor must be a positive number; got {ReductionFactor}.");
        }

        _ = Activation;
        if (!InitSchemes.Contains(InitWeights))
        {
            throw new ArgumentException($"init_weights '{InitWeights}' is not supported; use {string.Join(", ", InitSchemes)}.");
        }

        if (!MhAdapter && !OutputAdapter)
        {
            throw new ArgumentException("the adapter sits nowhere: mh_adapter and output_adapter are both false.");
        }

        if (ScalingKind == BottleneckScalingKind.Constant && !double.IsFinite(Scaling))
        {
            throw new ArgumentException($"scaling must be a finite number, \"learned\" or \"channel\"; got {Scaling}.");
        }

        if (LeaveOut.Any(l => l < 0))
        {
            throw new ArgumentException($"leave_out holds a negative layer: [{string.Join(", ", LeaveOut)}].");
        }
    }
}
