// The inputs and options of AdapterCombination: one module's LoRA factors, the combination
// types of PEFT's add_weighted_adapter (with their PEFT names) and the majority-sign methods
// of TIES.
namespace PeftKernels.Peft;

/// <summary>One module's LoRA factors: ΔW = Scale · B · A with A [Rank, InFeatures] and B [OutFeatures, Rank], row-major.</summary>
public sealed class LoraFactors
{
    /// <summary>Wraps the factors (not copied), checking their lengths against the shape.</summary>
    /// <exception cref="ArgumentException">A dim is not positive, a length does not match, or the scale is not finite.</exception>
    public LoraFactors(float[] a, float[] b, int rank, int inFeatures, int outFeatures, double scale)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        Positive(rank, nameof(rank));
        Positive(inFeatures, nameof(inFeatures));
        Positive(outFeatures, nameof(outFeatures));
        if (a.Length != (long)rank * inFeatures)
        {
            throw new ArgumentException($"a has length {a.Length}; expected {(long)rank * inFeatures} (rank·inFeatures = {rank}·{inFeatures}).", nameof(a));
        }

        if (b.Length != (long)outFeatures * rank)
        {
            throw new ArgumentException($"b has length {b.Length}; expected {(long)outFeatures * rank} (outFeatures·rank = {outFeatures}·{rank}).", nameof(b));
        }

        if (!double.IsFinite(scale))
        {
            throw new ArgumentException($"scale must be finite, got {scale}.", nameof(scale));
        }

        A = a;
        B = b;
        Rank = rank;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Scale = scale;
    }

    /// <summary>lora_A weight [Rank, InFeatures].</summary>
    public float[] A { get; }

    /// <summary>lora_B weight [OutFeatures, Rank].</summary>
    public float[] B { get; }

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>Input features of the module.</summary>
    public int InFeatures { get; }

    /// <summary>Output features of the module.</summary>
    public int OutFeatures { get; }

    /// <summary>The LoRA scale s (alpha / r, or alpha / sqrt(r) with rsLoRA).</summary>
    public double Scale { get; }

    private static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} must be > 0, got {value}.", name);
        }
    }
}

/// <summary>How <see cref="AdapterCombination.Combine"/> combines adapters (PEFT's combination_type).</summary>
public enum AdapterCombinationType
{
    /// <summary>"svd": truncated SVD of Σ wᵢ·ΔWᵢ (PEFT's default).</summary>
    Svd,

    /// <summary>"linear": A's and B's combined separately with √|wᵢsᵢ| (A carries the sign); equal ranks.</summary>
    Linear,

    /// <summary>"cat": A's stacked (scaled by wᵢsᵢ), B's concatenated; exact, rank Σ rᵢ.</summary>
    Cat,

    /// <summary>"ties" on the A's and on the B's; equal ranks.</summary>
    Ties,

    /// <summary>"ties_svd": TIES on the ΔWᵢ, then truncated SVD.</summary>
    TiesSvd,

    /// <summary>"dare_linear" on the A's and on the B's; equal ranks.</summary>
    DareLinear,

    /// <summary>"dare_linear_svd": DARE on the ΔWᵢ, then truncated SVD.</summary>
    DareLinearSvd,

    /// <summary>"dare_ties" on the A's and on the B's; equal ranks.</summary>
    DareTies,

    /// <summary>"dare_ties_svd": DARE + TIES sign election on the ΔWᵢ, then truncated SVD.</summary>
    DareTiesSvd,

    /// <summary>"magnitude_prune" on the A's and on the B's; equal ranks.</summary>
    MagnitudePrune,

    /// <summary>"magnitude_prune_svd": magnitude pruning of the ΔWᵢ, then truncated SVD.</summary>
    MagnitudePruneSvd,
}

/// <summary>How TIES elects the sign of each entry (PEFT's majority_sign_method).</summary>
public enum MajoritySignMethod
{
    /// <summary>"total": the sign of the sum of the (pruned) entries.</summary>
    Total,

    /// <summary>"frequency": the sign held by more (pruned, non-zero) entries.</summary>
    Frequency,
}

/// <summary>Options of <see cref="AdapterCombination.Combine"/>, named as PEFT's add_weighted_adapter arguments.</summary>
public sealed record AdapterCombinationOptions
{
    /// <summary>combination_type (default svd, as in PEFT).</summary>
    public AdapterCombinationType Type { get; init; } = AdapterCombinationType.Svd;

    /// <summary>svd_rank: the rank of an SVD combination; null means the largest input rank.</summary>
    public int? SvdRank { get; init; }

    /// <summary>svd_clamp: quantile in [0, 1] of the factor entries to clamp to (±), or null for no clamping (PEFT's default).</summary>
    public double? SvdClamp { get; init; }

    /// <summary>density in [0, 1]: the fraction of entries kept by TIES, DARE and magnitude pruning; required by those.</summary>
    public double? Density { get; init; }

    /// <summary>majority_sign_method of the TIES variants (default total).</summary>
    public MajoritySignMethod MajoritySignMethod { get; init; } = MajoritySignMethod.Total;

    /// <summary>Seed of DARE's random drops (PEFT uses torch's global RNG, which this cannot reproduce).</summary>
    public ulong Seed { get; init; }
}
