using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>TIES / DARE / magnitude pruning against hand-computed vectors, the svd clamp, FedAvg, names and bad input.</summary>
public partial class AdapterCombinationTests
{
    /// <summary>
    /// ties on rank-1 factors (s = w = 1, density 0.5, total). A: keep the 2 largest |·| of each → [0,−1,0,3] and
    /// [0,−2,0,1]; elected signs [+,−,+,+]; agreeing means → [0, −1.5, 0, 2]. B: keep 1 of 2 → [2,0], [3,0] → [2.5, 0].
    /// </summary>
    [Fact]
    public void TiesMatchesHandComputedFactors()
    {
        var a1 = new LoraFactors([0.5f, -1f, 0.2f, 3f], [2f, -1f], 1, 4, 2, 1.0);
        var a2 = new LoraFactors([-0.4f, -2f, 0.1f, 1f], [3f, 1f], 1, 4, 2, 1.0);
        var c = AdapterCombination.Combine([a1, a2], [1, 1], new() { Type = AdapterCombinationType.Ties, Density = 0.5 });
        Assert.Equal([0f, -1.5f, 0f, 2f], c.A);
        Assert.Equal([2.5f, 0f], c.B);
    }

    /// <summary>The sign is elected on the pruned, unweighted tensors; "total" sums values, "frequency" sums signs; a tie elects +.</summary>
    [Fact]
    public void MajoritySignTotalVersusFrequency()
    {
        double[][] t = [[3], [-1], [-1]];
        Assert.Equal(3, TaskVectorMerge.Ties(t, [1, 1, 1], 1, MajoritySignMethod.Total)[0]);
        Assert.Equal(-1, TaskVectorMerge.Ties(t, [1, 1, 1], 1, MajoritySignMethod.Frequency)[0]);
        Assert.Equal(2, TaskVectorMerge.Ties([[1], [-1]], [2, 5], 1, MajoritySignMethod.Total)[0]);
        Assert.Equal(2, TaskVectorMerge.Ties([[1], [-1]], [2, 5], 1, MajoritySignMethod.Frequency)[0]);

        // Unweighted Σ = 1 − 1.5 < 0 elects −, though the weighted sum 3·1 − 1.5 would elect +.
        Assert.Equal(-1.5, TaskVectorMerge.Ties([[1], [-1.5]], [3, 1], 1, MajoritySignMethod.Total)[0]);
    }

    /// <summary>magnitude_prune: Σ wᵢ·prune(tᵢ); density 0.7 of 3 keeps ⌊2.1⌋ = 2 entries of each.</summary>
    [Fact]
    public void MagnitudePruneMatchesHandComputedVector()
    {
        var merged = TaskVectorMerge.MagnitudePrune([[1, -3, 2], [0.5, 0.1, -4]], [2, -1], 0.7);
        Assert.Equal([-0.5, -6, 8], merged);
    }

    /// <summary>k = int(density·numel) as Python computes it (0.29·100 = 28.999… → 28); equal magnitudes keep the lower index.</summary>
    [Fact]
    public void MagnitudePruningKeepsFloorOfDensityTimesCount()
    {
        var t = Enumerable.Range(1, 100).Select(i => (double)(i % 2 == 0 ? i : -i)).ToArray();
        var pruned = TaskVectorMerge.PruneMagnitude(t, 0.29);
        Assert.Equal(28, pruned.Count(v => v != 0));
        Assert.All(Enumerable.Range(72, 28), i => Assert.Equal(t[i], pruned[i])); // the 28 largest |·| are the last 28
        Assert.Equal([1.0, -1.0, 0, 0], TaskVectorMerge.PruneMagnitude([1, -1, 1, 0.5], 0.5));
        Assert.Equal(new double[3], TaskVectorMerge.PruneMagnitude([1, 2, 3], 0.2));
        Assert.Equal([1.0, 2, 3], TaskVectorMerge.PruneMagnitude([1, 2, 3], 1));
    }

    /// <summary>DARE keeps each entry with probability density and rescales it by 1/density; seeded, reproducible, per-stream.</summary>
    [Fact]
    public void DareDropsAtRandomSeededAndRescales()
    {
        var ones = Enumerable.Repeat(1.0, 20_000).ToArray();
        var pruned = TaskVectorMerge.PruneRandom(ones, 0.3, 7, 0);
        Assert.All(pruned, v => Assert.True(v == 0 || v == 1 / 0.3));
        int kept = pruned.Count(v => v != 0);
        double sd = Math.Sqrt(20_000 * 0.3 * 0.7); // Binomial(20000, 0.3): 6 standard deviations
        Assert.InRange(kept, 6000 - (6 * sd), 6000 + (6 * sd));
        Assert.Equal(pruned, TaskVectorMerge.PruneRandom(ones, 0.3, 7, 0));
        Assert.NotEqual(pruned, TaskVectorMerge.PruneRandom(ones, 0.3, 8, 0));
        Assert.NotEqual(pruned, TaskVectorMerge.PruneRandom(ones, 0.3, 7, 1));

        var adapters = new[] { Factors(2, 30, 20, 2.0, 51), Factors(2, 30, 20, 1.0, 53) };
        foreach (var type in new[] { AdapterCombinationType.DareLinear, AdapterCombinationType.DareTies, AdapterCombinationType.DareTiesSvd })
        {
            var first = AdapterCombination.Combine(adapters, [0.5, 0.5], new() { Type = type, Density = 0.5, Seed = 3 });
            var again = AdapterCombination.Combine(adapters, [0.5, 0.5], new() { Type = type, Density = 0.5, Seed = 3 });
            var other = AdapterCombination.Combine(adapters, [0.5, 0.5], new() { Type = type, Density = 0.5, Seed = 4 });
            Assert.Equal(first.A, again.A);
            Assert.Equal(first.B, again.B);
            Assert.NotEqual(first.A, other.A);
        }

        var dense = AdapterCombination.Combine(adapters, [0.5, -0.5], new() { Type = AdapterCombinationType.DareLinear, Density = 1, Seed = 3 });
        var linear = AdapterCombination.Combine(adapters, [0.5, -0.5], new() { Type = AdapterCombinationType.Linear });
        Assert.Equal(linear.A, dense.A);
        Assert.Equal(linear.B, dense.B);
    }

    /// <summary>torch.quantile's linear interpolation, and the clamp of both factors to ±quantile.</summary>
    [Fact]
    public void SvdClampUsesTheQuantileOfBothFactors()
    {
        Assert.Equal(2.5, LowRankApproximation.Quantile([4, 1, 3, 2], 0.5));
        Assert.Equal(3.7, LowRankApproximation.Quantile([4, 1, 3, 2], 0.9), 1e-12);
        Assert.Equal(1, LowRankApproximation.Quantile([4, 1, 3, 2], 0));
        Assert.Equal(4, LowRankApproximation.Quantile([4, 1, 3, 2], 1));

        var adapters = new[] { Factors(3, 10, 8, 2.0, 61), Factors(2, 10, 8, 1.0, 63) };
        var plain = AdapterCombination.Combine(adapters, [1, 1], new() { SvdRank = 3 });
        var clamped = AdapterCombination.Combine(adapters, [1, 1], new() { SvdRank = 3, SvdClamp = 0.8 });
        double hi = LowRankApproximation.Quantile([.. plain.B.Select(v => (double)v), .. plain.A.Select(v => (double)v)], 0.8);
        int changed = 0;
        foreach (var (before, after) in plain.B.Zip(clamped.B).Concat(plain.A.Zip(clamped.A)))
        {
            Assert.Equal(Math.Clamp(before, -hi, hi), after, 1e-6); // the quantile of fp32-rounded vs double factors
            changed += Math.Abs(before) > hi + 1e-6 ? 1 : 0;
        }

        Assert.True(changed > 0, "the 0.8 quantile clamps some entries");
    }

    [Fact]
    public void FederatedAverageWeightsBySampleCount()
    {
        var clients = new[] { Factors(2, 5, 3, 2.0, 71), Factors(2, 5, 3, 2.0, 73), Factors(2, 5, 3, 2.0, 75) };
        var avg = AdapterCombination.FederatedAverage(clients, [1, 3, 4]);
        Assert.Equal(2, avg.Rank);
        Assert.Equal(2.0, avg.Scale);
        for (int e = 0; e < avg.A.Length; e++)
        {
            Assert.Equal((float)((clients[0].A[e] + (3.0 * clients[1].A[e]) + (4.0 * clients[2].A[e])) / 8), avg.A[e]);
        }

        for (int e = 0; e < avg.B.Length; e++)
        {
            Assert.Equal((float)((clients[0].B[e] + (3.0 * clients[1].B[e]) + (4.0 * clients[2].B[e])) / 8), avg.B[e]);
        }

        Assert.Equal([2.5f, 4.25f], AdapterCombination.FederatedAverage([[1f, 2f], [3f, 5f]], [1, 3], "bias"));
    }

    [Fact]
    public void FederatedAverageRejectsBadInput()
    {
        var c = Factors(2, 5, 3, 2.0, 1);
        var ex = Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, Factors(3, 5, 3, 2.0, 2)], [1, 1]));
        Assert.Contains("equal rank", ex.Message);
        Assert.Contains("rank 3", ex.Message);
        Assert.Contains("counts must be > 0", Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, c], [1, 0])).Message);
        Assert.Contains("-2", Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, c], [-2, 1])).Message);
        Assert.Contains("scale", Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, Factors(2, 5, 3, 1.0, 2)], [1, 1])).Message);
        Assert.Contains("[3, 6]", Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, Factors(2, 6, 3, 2.0, 2)], [1, 1])).Message);
        Assert.Equal("sampleCounts", Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage([c, c], [1])).ParamName);
        Assert.Contains("bias of client 1 has 3 elements", Assert.Throws<ArgumentException>(() =>
            AdapterCombination.FederatedAverage([new float[2], new float[3]], [1, 1], "bias")).Message);
        Assert.Throws<ArgumentException>(() => AdapterCombination.FederatedAverage(Array.Empty<LoraFactors>(), []));
    }

    [Fact]
    public void NamesRoundTripAsPeftSpellsThem()
    {
        foreach (var type in Enum.GetValues<AdapterCombinationType>())
        {
            Assert.Equal(type, AdapterCombination.ParseType(AdapterCombination.PeftName(type)));
        }

        Assert.Equal("magnitude_prune_svd", AdapterCombination.PeftName(AdapterCombinationType.MagnitudePruneSvd));
        Assert.Equal(AdapterCombinationType.DareTies, AdapterCombination.ParseType("DARE_TIES"));
        var ex = Assert.Throws<ArgumentException>(() => AdapterCombination.ParseType("average"));
        Assert.Contains("'average'", ex.Message);
        Assert.Contains("dare_linear_svd", ex.Message);
    }

    [Fact]
    public void CombinedRankFollowsPeft()
    {
        Assert.Equal(7, AdapterCombination.CombinedRank([3, 4], new() { Type = AdapterCombinationType.Cat }));
        Assert.Equal(4, AdapterCombination.CombinedRank([3, 4], new() { Type = AdapterCombinationType.TiesSvd }));
        Assert.Equal(9, AdapterCombination.CombinedRank([3, 4], new() { SvdRank = 9 }));
        Assert.Equal(3, AdapterCombination.CombinedRank([3, 3], new() { Type = AdapterCombinationType.DareTies }));
        Assert.Equal(5, AdapterCombination.CombinedRank([5], new() { Type = AdapterCombinationType.Cat, SvdRank = 2 }));
        Assert.Contains("equal rank", Assert.Throws<ArgumentException>(() =>
            AdapterCombination.CombinedRank([3, 4], new() { Type = AdapterCombinationType.Linear })).Message);
        Assert.Contains("svd_rank", Assert.Throws<ArgumentException>(() => AdapterCombination.CombinedRank([3, 4], new() { SvdRank = 0 })).Message);
    }

    [Fact]
    public void BadInputThrowsClearErrors()
    {
        var f = Factors(2, 5, 3, 1.0, 1);
        var g = Factors(2, 5, 3, 1.0, 2);
        string Message(Action act) => Assert.Throws<ArgumentException>(act).Message;

        Assert.Contains("one per adapter (2)", Message(() => AdapterCombination.Combine([f, g], [1])));
        Assert.Contains("no adapters", Message(() => AdapterCombination.Combine([], [])));
        Assert.Contains("needs a density", Message(() => AdapterCombination.Combine([f, g], [1, 1], new() { Type = AdapterCombinationType.Ties })));
        Assert.Contains("got 1.5", Message(() => AdapterCombination.Combine([f, g], [1, 1], new() { Type = AdapterCombinationType.MagnitudePrune, Density = 1.5 })));
        Assert.Contains("(0, 1] for DARE", Message(() => AdapterCombination.Combine([f, g], [1, 1], new() { Type = AdapterCombinationType.DareLinear, Density = 0 })));
        Assert.Contains("weight 1 is NaN", Message(() => AdapterCombination.Combine([f, g], [1, double.NaN])));
        Assert.Contains("svd_clamp", Message(() => AdapterCombination.Combine([f, g], [1, 1], new() { SvdClamp = 2 })));
        Assert.Contains("svd_rank", Message(() => AdapterCombination.Combine([f, g], [1, 1], new() { SvdRank = -1 })));
        Assert.Contains("adapter 1 is for a [3, 6] weight", Message(() => AdapterCombination.Combine([f, Factors(2, 6, 3, 1.0, 3)], [1, 1])));

        var bad = Factors(2, 5, 3, 1.0, 4);
        bad.B[4] = float.PositiveInfinity;
        Assert.Contains("adapter 1 lora_B has a non-finite entry", Message(() => AdapterCombination.Combine([f, bad], [1, 1])));

        var ex = Assert.Throws<ArgumentException>(() => new LoraFactors(new float[9], new float[6], 2, 5, 3, 1.0));
        Assert.Equal("a", ex.ParamName);
        Assert.Contains("expected 10", ex.Message);
        Assert.Equal("b", Assert.Throws<ArgumentException>(() => new LoraFactors(new float[10], new float[7], 2, 5, 3, 1.0)).ParamName);
        Assert.Equal("scale", Assert.Throws<ArgumentException>(() => new LoraFactors(new float[10], new float[6], 2, 5, 3, double.NaN)).ParamName);
        Assert.Equal("rank", Assert.Throws<ArgumentException>(() => new LoraFactors([], [], 0, 5, 3, 1.0)).ParamName);
    }

    /// <summary>
    /// The subspace-iteration route (large dense ΔW) agrees with the exact QR + SVD route: same singular values and the
    /// same rank-k approximation, to fp32 accuracy (its products run on the fp32 Gemm kernel).
    /// </summary>
    [Fact]
    public void IterativeTruncatedSvdAgreesWithTheExactOne()
    {
        var (rows, cols, k) = (150, 200, 6);
        var rng = new Random(77);
        var u = Orthonormal(rows, 40, 78);
        var v = Orthonormal(cols, 40, 79);
        var m = new double[rows * cols];
        for (int j = 0; j < 40; j++)
        {
            double sigma = 10 * Math.Pow(0.8, j); // a decaying spectrum, as a merged task vector has
            for (int r = 0; r < rows; r++)
            {
                for (int p = 0; p < cols; p++)
                {
                    m[(r * cols) + p] += sigma * u[r, j] * v[p, j];
                }
            }
        }

        for (int i = 0; i < m.Length; i++)
        {
            m[i] += 1e-3 * ((rng.NextDouble() * 2) - 1);
        }

        var exact = LowRankApproximation.TruncatedSvdExact(m, rows, cols, k);
        var iterative = LowRankApproximation.TruncatedSvdIterative(m, rows, cols, k);
        double[] Product((double[] US, double[] Vt) f)
        {
            var result = new double[rows * cols];
            for (int r = 0; r < rows; r++)
            {
                for (int j = 0; j < k; j++)
                {
                    for (int p = 0; p < cols; p++)
                    {
                        result[(r * cols) + p] += f.US[(r * k) + j] * f.Vt[(j * cols) + p];
                    }
                }
            }

            return result;
        }

        // σ₁ = 10 and fp32 products: entries of the rank-k approximations agree to ~1e-5 absolute.
        Close(Product(iterative), Product(exact), 1e-4, "rank-k approximation");
        for (int j = 0; j < k; j++)
        {
            double sigmaExact = Math.Sqrt(Enumerable.Range(0, rows).Sum(r => exact.US[(r * k) + j] * exact.US[(r * k) + j]));
            double sigmaIterative = Math.Sqrt(Enumerable.Range(0, rows).Sum(r => iterative.US[(r * k) + j] * iterative.US[(r * k) + j]));
            Assert.Equal(sigmaExact, sigmaIterative, 1e-4 * sigmaExact);
        }
    }
}
