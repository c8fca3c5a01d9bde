// The SVD combinations: ΔW [out, in] ≈ U_k·Σ_k·V_kᵀ (the best rank-k approximation in
// Frobenius norm), B = U_k·Σ_k [out, k], A = V_kᵀ [k, in], then the optional svd_clamp
// (LowRankApproximation holds the linear algebra).
// "svd" never forms ΔW: ΔW = L·R with L = [B₁ … Bₙ] [out, Σ rᵢ] and R = rows(wᵢsᵢAᵢ).
// The pruned variants (ties_svd, dare_*_svd, magnitude_prune_svd) form the merged ΔW (full
// rank in general) from the ΔWᵢ = sᵢ·Bᵢ·Aᵢ.
namespace PeftKernels.Peft;

public static partial class AdapterCombination
{
    private static LoraFactors SvdCombine(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights, AdapterCombinationType type,
        AdapterCombinationOptions options, int rank, int inFeatures, int outFeatures)
    {
        (double[] US, double[] Vt) factors;
        if (type == AdapterCombinationType.Svd)
        {
            int total = adapters.Sum(a => a.Rank);
            var left = new double[(long)outFeatures * total];
            var right = new double[(long)total * inFeatures];
            int offset = 0;
            foreach (var (f, w) in adapters.Zip(weights))
            {
                double c = w * f.Scale;
                for (int o = 0; o < outFeatures; o++)
                {
                    for (int q = 0; q < f.Rank; q++)
                    {
                        left[((long)o * total) + offset + q] = f.B[((long)o * f.Rank) + q];
                    }
                }

                for (long e = 0; e < f.A.Length; e++)
                {
                    right[((long)offset * inFeatures) + e] = c * f.A[e];
                }

                offset += f.Rank;
            }

            factors = LowRankApproximation.TruncatedSvdLowRank(left, right, outFeatures, inFeatures, total, rank);
        }
        else
        {
            var deltas = adapters.Select(f => DeltaWeight(f)).ToList();
            var streams = Enumerable.Range(0, adapters.Count).Select(i => (ulong)i).ToList();
            var merged = Merge(type, deltas, weights, options, streams);
            factors = LowRankApproximation.TruncatedSvd(merged, outFeatures, inFeatures, rank);
        }

        if (options.SvdClamp is double clamp)
        {
            LowRankApproximation.ClampToQuantile(factors.US, factors.Vt, clamp);
        }

        return new LoraFactors(Narrow(factors.Vt), Narrow(factors.US), rank, inFeatures, outFeatures, 1.0);
    }

    /// <summary>sᵢ·Bᵢ·Aᵢ in double, [out, in].</summary>
    private static double[] DeltaWeight(LoraFactors f)
    {
        var delta = new double[(long)f.OutFeatures * f.InFeatures];
        for (int o = 0; o < f.OutFeatures; o++)
        {
            for (int q = 0; q < f.Rank; q++)
            {
                double coefficient = f.Scale * f.B[((long)o * f.Rank) + q];
                long a0 = (long)q * f.InFeatures, d0 = (long)o * f.InFeatures;
                for (int p = 0; p < f.InFeatures; p++)
                {
                    delta[d0 + p] += coefficient * f.A[a0 + p];
                }
            }
        }

        return delta;
    }
}
