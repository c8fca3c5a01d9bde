// Combining LoRA adapters of one module into one new adapter, as PEFT v0.20's
// LoraModel.add_weighted_adapter does (docs/formats/methods.md#weighted-combination). Inputs: adapters i
// with Aᵢ [rᵢ, in], Bᵢ [out, rᵢ], scale sᵢ, and weights wᵢ; ΔWᵢ = sᵢ·Bᵢ·Aᵢ. The result's scale
// is 1 (PEFT writes lora_alpha = r_new and must not set use_rslora, so s = alpha / r = 1).
//   linear, ties, dare_linear, dare_ties, magnitude_prune (equal ranks r; result rank r):
//     with cᵢ = √|wᵢsᵢ|, the task-vector merge (TaskVectorMerge) of the Aᵢ with weights
//     sign(wᵢsᵢ)·cᵢ and, separately, of the Bᵢ with weights cᵢ; so "linear" gives
//     A = Σ sign(wᵢsᵢ)cᵢAᵢ, B = Σ cᵢBᵢ and B·A = Σ wᵢsᵢBᵢAᵢ + cross terms (not exact).
//   cat (any ranks; result rank Σ rᵢ): A = rows(wᵢsᵢAᵢ), B = cols(Bᵢ), so B·A = Σ wᵢsᵢBᵢAᵢ exactly.
//   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd (result rank k = svd_rank,
//     default max rᵢ): ΔW = the task-vector merge of the ΔWᵢ with weights wᵢ (svd: Σ wᵢΔWᵢ);
//     ΔW ≈ U_k·Σ_k·V_kᵀ, B = U_k·Σ_k, A = V_kᵀ; optional clamp of both factors to ±quantile(clamp).
//     (older PEFT releases weighted the ΔWᵢ by wᵢsᵢ, applying sᵢ twice; PEFT fixed that in 2026.)
// A single adapter is always combined with "linear" (and keeps its rank), as PEFT does.
// Negative weights: the sign goes on A only (docs/formats/methods.md#weighted-combination), so B·A keeps it.
// Everything is computed in double and rounded to fp32 once at the end, except the products of
// the subspace iteration that a large dense *_svd combination uses (fp32, LowRankApproximation).
namespace PeftKernels.Peft;

/// <summary>Weighted combination of LoRA adapters (PEFT's add_weighted_adapter) and federated averaging, per module.</summary>
public static partial class AdapterCombination
{
    private static readonly (AdapterCombinationType Type, string Name)[] Names =
    [
        (AdapterCombinationType.Svd, "svd"), (AdapterCombinationType.Linear, "linear"), (AdapterCombinationType.Cat, "cat"),
        (AdapterCombinationType.Ties, "ties"), (AdapterCombinationType.TiesSvd, "ties_svd"),
        (AdapterCombinationType.DareLinear, "dare_linear"), (AdapterCombinationType.DareLinearSvd, "dare_linear_svd"),
        (AdapterCombinationType.DareTies, "dare_ties"), (AdapterCombinationType.DareTiesSvd, "dare_ties_svd"),
        (AdapterCombinationType.MagnitudePrune, "magnitude_prune"), (AdapterCombinationType.MagnitudePruneSvd, "magnitude_prune_svd"),
    ];

    /// <summary>PEFT's name of a combination type, e.g. "dare_ties".</summary>
    public static string PeftName(AdapterCombinationType type) =>
        Names.First(n => n.Type == type).Name;

    /// <summary>The combination type of a PEFT name (case-insensitive), e.g. "magnitude_prune_svd".</summary>
    /// <exception cref="ArgumentException">The name is not one of PEFT's combination types.</exception>
    public static AdapterCombinationType ParseType(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        foreach (var (type, peft) in Names)
        {
            if (string.Equals(name, peft, StringComparison.OrdinalIgnoreCase))
            {
                return type;
            }
        }

        throw new ArgumentException($"unknown combination type '{name}'; expected one of {string.Join(", ", Names.Select(n => n.Name))}.", nameof(name));
    }

    /// <summary>
    /// The rank of the combined adapter from the adapters' configured ranks, as PEFT decides it before touching any
    /// module: one adapter → its rank; linear/ties/dare_*/magnitude_prune → the common rank; cat → the sum; *svd → svd_rank or the max.
    /// </summary>
    /// <exception cref="ArgumentException">No ranks, a rank ≤ 0, a bad svd_rank, or unequal ranks for a type that needs them.</exception>
    public static int CombinedRank(IReadOnlyList<int> ranks, AdapterCombinationOptions options)
    {
        ArgumentNullException.ThrowIfNull(ranks);
        ArgumentNullException.ThrowIfNull(options);
        if (ranks.Count == 0)
        {
            throw new ArgumentException("no adapters to combine.", nameof(ranks));
        }

        if (ranks.Any(r => r <= 0))
        {
            throw new ArgumentException($"every rank must be > 0, got [{string.Join(", ", ranks)}].", nameof(ranks));
        }

        var type = ranks.Count == 1 ? AdapterCombinationType.Linear : options.Type;
        if (IsFactorwise(type))
        {
            if (ranks.Distinct().Count() != 1)
            {
                throw new ArgumentException(
                    $"combination '{PeftName(type)}' needs adapters of equal rank, got ranks [{string.Join(", ", ranks)}]; use cat or an svd type.", nameof(ranks));
            }

            return ranks[0];
        }

        if (type == AdapterCombinationType.Cat)
        {
            return ranks.Sum();
        }

        if (options.SvdRank is int k && k <= 0)
        {
            throw new ArgumentException($"svd_rank must be > 0, got {k}.", nameof(options));
        }

        return options.SvdRank ?? ranks.Max();
    }

    /// <summary>Combines one module's adapters into one adapter of scale 1 (see the file header for each type's formula).</summary>
    /// <param name="adapters">The adapters' factors for this module (same in/out features).</param>
    /// <param name="weights">One weight per adapter (may be negative).</param>
    /// <param name="options">Type, svd rank and clamp, density, sign method, seed; null means PEFT's defaults (svd).</param>
    /// <returns>The combined factors, with <see cref="LoraFactors.Scale"/> = 1.</returns>
    /// <exception cref="ArgumentException">Mismatched counts or shapes, unequal ranks where they must match, a missing or
    /// out-of-range density, a non-finite weight or factor entry, or a bad svd option.</exception>
    public static LoraFactors Combine(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights, AdapterCombinationOptions? options = null)
    {
        options ??= new AdapterCombinationOptions();
        var (inFeatures, outFeatures) = Validate(adapters, weights, options);
        var type = adapters.Count == 1 ? AdapterCombinationType.Linear : options.Type;
        int rank = CombinedRank(adapters.Select(a => a.Rank).ToList(), options with { Type = type });
        if (type == AdapterCombinationType.Cat)
        {
            return Cat(adapters, weights, rank, inFeatures, outFeatures);
        }

        return IsFactorwise(type)
            ? Factorwise(adapters, weights, type, options, rank, inFeatures, outFeatures)
            : SvdCombine(adapters, weights, type, options, rank, inFeatures, outFeatures);
    }

    private static bool IsFactorwise(AdapterCombinationType type) => type is AdapterCombinationType.Linear or AdapterCombinationType.Ties
        or AdapterCombinationType.DareLinear or AdapterCombinationType.DareTies or AdapterCombinationType.MagnitudePrune;

    private static (int In, int Out) Validate(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights, AdapterCombinationOptions options)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(weights);
        if (adapters.Count == 0)
        {
            throw new ArgumentException("no adapters to combine.", nameof(adapters));
        }

        if (weights.Count != adapters.Count)
        {
            throw new ArgumentException($"weights has {weights.Count} entries; expected one per adapter ({adapters.Count}).", nameof(weights));
        }

        var first = adapters[0] ?? throw new ArgumentException("adapter 0 is null.", nameof(adapters));
        for (int i = 0; i < adapters.Count; i++)
        {
            var a = adapters[i] ?? throw new ArgumentException($"adapter {i} is null.", nameof(adapters));
            if (a.InFeatures != first.InFeatures || a.OutFeatures != first.OutFeatures)
            {
                throw new ArgumentException(
                    $"adapter {i} is for a [{a.OutFeatures}, {a.InFeatures}] weight but adapter 0 for [{first.OutFeatures}, {first.InFeatures}].", nameof(adapters));
            }

            if (!double.IsFinite(weights[i]))
            {
                throw new ArgumentException($"weight {i} is {weights[i]}; weights must be finite.", nameof(weights));
            }

            RequireFinite(a.A, $"adapter {i} lora_A");
            RequireFinite(a.B, $"adapter {i} lora_B");
        }

        if (options.SvdClamp is double clamp && !(clamp >= 0 && clamp <= 1))
        {
            throw new ArgumentException($"svd_clamp must be a quantile in [0, 1], got {clamp}.", nameof(options));
        }

        var type = adapters.Count == 1 ? AdapterCombinationType.Linear : options.Type;
        bool pruned = type is not (AdapterCombinationType.Linear or AdapterCombinationType.Cat or AdapterCombinationType.Svd);
        if (pruned)
        {
            if (options.Density is not double density)
            {
                throw new ArgumentException($"combination '{PeftName(type)}' needs a density in [0, 1].", nameof(options));
            }

            bool dare = type is AdapterCombinationType.DareLinear or AdapterCombinationType.DareLinearSvd
                or AdapterCombinationType.DareTies or AdapterCombinationType.DareTiesSvd;
            if (!(density >= 0 && density <= 1) || (dare && density == 0))
            {
                throw new ArgumentException(
                    $"density must be in {(dare ? "(0, 1] for DARE (kept entries are divided by it)" : "[0, 1]")}, got {density}.", nameof(options));
            }
        }

        return (first.InFeatures, first.OutFeatures);
    }

    private static void RequireFinite(float[] values, string what)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                throw new ArgumentException($"{what} has a non-finite entry {values[i]} at index {i}.", "adapters");
            }
        }
    }

    /// <summary>A = rows(wᵢsᵢAᵢ), B = cols(Bᵢ).</summary>
    private static LoraFactors Cat(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights, int rank, int inFeatures, int outFeatures)
    {
        var a = new float[(long)rank * inFeatures];
        var b = new float[(long)outFeatures * rank];
        int offset = 0;
        for (int i = 0; i < adapters.Count; i++)
        {
            var f = adapters[i];
            double c = weights[i] * f.Scale;
            for (long e = 0; e < f.A.Length; e++)
            {
                a[((long)offset * inFeatures) + e] = (float)(c * f.A[e]);
            }

            for (int o = 0; o < outFeatures; o++)
            {
                Array.Copy(f.B, (long)o * f.Rank, b, ((long)o * rank) + offset, f.Rank);
            }

            offset += f.Rank;
        }

        return new LoraFactors(a, b, rank, inFeatures, outFeatures, 1.0);
    }

    /// <summary>The merge of the Aᵢ with weights sign(wᵢsᵢ)·√|wᵢsᵢ| and of the Bᵢ with √|wᵢsᵢ| (streams 2i and 2i + 1).</summary>
    private static LoraFactors Factorwise(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights, AdapterCombinationType type,
        AdapterCombinationOptions options, int rank, int inFeatures, int outFeatures)
    {
        var weightsA = new double[adapters.Count];
        var weightsB = new double[adapters.Count];
        for (int i = 0; i < adapters.Count; i++)
        {
            double ws = weights[i] * adapters[i].Scale;
            double magnitude = Math.Sqrt(Math.Abs(ws));
            weightsA[i] = ws < 0 ? -magnitude : magnitude;
            weightsB[i] = magnitude;
        }

        var a = Merge(type, adapters.Select(f => Widen(f.A)).ToList(), weightsA, options, Enumerable.Range(0, adapters.Count).Select(i => (ulong)(2 * i)).ToList());
        var b = Merge(type, adapters.Select(f => Widen(f.B)).ToList(), weightsB, options, Enumerable.Range(0, adapters.Count).Select(i => (ulong)((2 * i) + 1)).ToList());
        return new LoraFactors(Narrow(a), Narrow(b), rank, inFeatures, outFeatures, 1.0);
    }

    /// <summary>The task-vector merge of a combination type (an svd type uses that of its prefix; plain svd is task arithmetic).</summary>
    private static double[] Merge(AdapterCombinationType type, IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights,
        AdapterCombinationOptions options, IReadOnlyList<ulong> streams)
    {
        double density = options.Density ?? 1;
        return type switch
        {
            AdapterCombinationType.Linear or AdapterCombinationType.Svd => TaskVectorMerge.TaskArithmetic(tensors, weights),
            AdapterCombinationType.Ties or AdapterCombinationType.TiesSvd => TaskVectorMerge.Ties(tensors, weights, density, options.MajoritySignMethod),
            AdapterCombinationType.DareLinear or AdapterCombinationType.DareLinearSvd => TaskVectorMerge.DareLinear(tensors, weights, density, options.Seed, streams),
            AdapterCombinationType.DareTies or AdapterCombinationType.DareTiesSvd =>
                TaskVectorMerge.DareTies(tensors, weights, density, options.MajoritySignMethod, options.Seed, streams),
            AdapterCombinationType.MagnitudePrune or AdapterCombinationType.MagnitudePruneSvd => TaskVectorMerge.MagnitudePrune(tensors, weights, density),
            _ => throw new ArgumentException($"combination '{PeftName(type)}' has no task-vector merge.", nameof(type)),
        };
    }

    private static double[] Widen(float[] values) => Array.ConvertAll(values, v => (double)v);

    private static float[] Narrow(double[] values) => Array.ConvertAll(values, v => (float)v);
}
