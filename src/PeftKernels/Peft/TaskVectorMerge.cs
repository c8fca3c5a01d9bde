// The task-vector merges of PEFT's merge_utils (v0.20), over flattened tensors tᵢ (all of one
// length) with weights wᵢ, in double:
//   task_arithmetic  Σ wᵢ·tᵢ
//   magnitude_prune  Σ wᵢ·prune_mag(tᵢ)
//   dare_linear      Σ wᵢ·prune_rand(tᵢ)
//   ties             disjoint(wᵢ·prune_mag(tᵢ))
//   dare_ties        disjoint(wᵢ·prune_rand(tᵢ))
// prune_mag(t) keeps the k = ⌊density·numel⌋ entries of largest |t| (ties in |t| broken toward
// the lower index; torch.topk leaves them unspecified) and zeroes the rest. prune_rand(t)
// keeps each entry with probability density and divides the kept ones by density. density ≥ 1
// prunes nothing (no rescale either).
// disjoint: the majority sign per entry is elected on the pruned, UNweighted tᵢ: sign(Σᵢ tᵢ)
// ("total") or sign(Σᵢ sign tᵢ) ("frequency"), a zero sum counting as +; then the weighted
// entries whose sign equals it (a pruned zero never does) are averaged:
//   Σᵢ [sign tᵢ = s]·wᵢtᵢ / max(1, Σᵢ [sign tᵢ = s]).
// DARE's drops come from a counter-based hash of (seed, stream, index), so a result depends only
// on the seed and the tensor's stream id, never on evaluation order; it cannot reproduce torch's
// bernoulli draws.
namespace PeftKernels.Peft;

internal static class TaskVectorMerge
{
    public static double[] TaskArithmetic(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights) =>
        WeightedSum(tensors, weights);

    public static double[] MagnitudePrune(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights, double density) =>
        WeightedSum(tensors.Select(t => PruneMagnitude(t, density)).ToList(), weights);

    public static double[] DareLinear(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights, double density, ulong seed, IReadOnlyList<ulong> streams) =>
        WeightedSum(tensors.Select((t, i) => PruneRandom(t, density, seed, streams[i])).ToList(), weights);

    public static double[] Ties(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights, double density, MajoritySignMethod method) =>
        Disjoint(tensors.Select(t => PruneMagnitude(t, density)).ToList(), weights, method);

    public static double[] DareTies(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights, double density, MajoritySignMethod method,
        ulong seed, IReadOnlyList<ulong> streams) =>
        Disjoint(tensors.Select((t, i) => PruneRandom(t, density, seed, streams[i])).ToList(), weights, method);

    /// <summary>Keeps the ⌊density·numel⌋ entries of largest magnitude (lower index first among equals).</summary>
    public static double[] PruneMagnitude(double[] tensor, double density)
    {
        if (density >= 1)
        {
            return tensor;
        }

        int keep = (int)Math.Floor(density * tensor.Length);
        var result = new double[tensor.Length];
        if (keep == 0)
        {
            return result;
        }

        // The keep-th largest magnitude is the threshold: everything above it stays, and as many
        // entries equal to it as are still needed, in index order.
        var magnitudes = tensor.Select(Math.Abs).ToArray();
        Array.Sort(magnitudes);
        double threshold = magnitudes[tensor.Length - keep];
        int atThreshold = keep - tensor.Count(v => Math.Abs(v) > threshold);
        for (int i = 0; i < tensor.Length; i++)
        {
            double m = Math.Abs(tensor[i]);
            if (m > threshold || (m == threshold && atThreshold-- > 0))
            {
                result[i] = tensor[i];
            }
        }

        return result;
    }

    /// <summary>Keeps each entry with probability density (hash of seed, stream, index) and rescales the kept ones by 1/density.</summary>
    public static double[] PruneRandom(double[] tensor, double density, ulong seed, ulong stream)
    {
        if (density >= 1)
        {
            return tensor;
        }

        var result = new double[tensor.Length];
        ulong key = Mix(seed ^ Mix(stream + 0x632BE59BD9B4E019UL));
        for (int i = 0; i < tensor.Length; i++)
        {
            if (Uniform(key, i) < density)
            {
                result[i] = tensor[i] / density;
            }
        }

        return result;
    }

    /// <summary>A uniform double in [0, 1) for element <paramref name="index"/> of the stream keyed by <paramref name="key"/>.</summary>
    public static double Uniform(ulong key, long index) => (Mix(key + (0x9E3779B97F4A7C15UL * (ulong)(index + 1))) >> 11) * (1.0 / (1UL << 53));

    /// <summary>Elects the sign of each entry on the unweighted tensors and averages the agreeing weighted entries.</summary>
    public static double[] Disjoint(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights, MajoritySignMethod method)
    {
        int length = tensors[0].Length;
        var result = new double[length];
        for (int j = 0; j < length; j++)
        {
            double elect = 0;
            foreach (var t in tensors)
            {
                elect += method == MajoritySignMethod.Total ? t[j] : Math.Sign(t[j]);
            }

            int majority = elect >= 0 ? 1 : -1;
            double sum = 0;
            int agreeing = 0;
            for (int i = 0; i < tensors.Count; i++)
            {
                if (Math.Sign(tensors[i][j]) == majority)
                {
                    sum += weights[i] * tensors[i][j];
                    agreeing++;
                }
            }

            result[j] = sum / Math.Max(1, agreeing);
        }

        return result;
    }

    private static double[] WeightedSum(IReadOnlyList<double[]> tensors, IReadOnlyList<double> weights)
    {
        var result = new double[tensors[0].Length];
        for (int i = 0; i < tensors.Count; i++)
        {
            double w = weights[i];
            var t = tensors[i];
            for (int j = 0; j < result.Length; j++)
            {
                result[j] += w * t[j];
            }
        }

        return result;
    }

    /// <summary>SplitMix64's finaliser.</summary>
    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
