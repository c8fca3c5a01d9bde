using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public partial class AdapterCombinationTests
{
    private static LoraFactors Factors(int rank, int inF, int outF, double scale, int seed) =>
        new(TestUtil.Random(rank * inF, seed), TestUtil.Random(outF * rank, seed + 1), rank, inF, outF, scale);

    /// <summary>s·B·A in double, [out, in].</summary>
    private static double[] Delta(LoraFactors f)
    {
        var d = new double[f.OutFeatures * f.InFeatures];
        for (int o = 0; o < f.OutFeatures; o++)
        {
            for (int p = 0; p < f.InFeatures; p++)
            {
                double sum = 0;
                for (int q = 0; q < f.Rank; q++)
                {
                    sum += (double)f.B[(o * f.Rank) + q] * f.A[(q * f.InFeatures) + p];
                }

                d[(o * f.InFeatures) + p] = f.Scale * sum;
            }
        }

        return d;
    }

    private static double[] WeightedDelta(IReadOnlyList<LoraFactors> adapters, IReadOnlyList<double> weights)
    {
        var sum = new double[adapters[0].OutFeatures * adapters[0].InFeatures];
        for (int i = 0; i < adapters.Count; i++)
        {
            var d = Delta(adapters[i]);
            for (int j = 0; j < sum.Length; j++)
            {
                sum[j] += weights[i] * d[j];
            }
        }

        return sum;
    }

    private static double SquaredNorm(IEnumerable<double> values) => values.Sum(v => v * v);

    private static double[] Minus(double[] a, double[] b) => a.Select((v, i) => v - b[i]).ToArray();

    private static void Close(double[] actual, double[] expected, double atol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(actual[i] - expected[i]) <= atol, $"{what}[{i}]: {actual[i]} vs {expected[i]} (atol {atol:G3})");
        }
    }

    [Fact]
    public void CatStacksScaledAsAndConcatenatesBsExactly()
    {
        var adapters = new[] { Factors(2, 7, 5, 2.0, 1), Factors(3, 7, 5, 0.5, 3), Factors(1, 7, 5, 4.0, 5) };
        double[] weights = [0.6, -1.5, 0.25];
        var c = AdapterCombination.Combine(adapters, weights, new() { Type = AdapterCombinationType.Cat });

        Assert.Equal(6, c.Rank);
        Assert.Equal(1.0, c.Scale);
        int offset = 0;
        for (int i = 0; i < adapters.Length; i++)
        {
            var f = adapters[i];
            for (int e = 0; e < f.A.Length; e++)
            {
                Assert.Equal((float)(weights[i] * f.Scale * f.A[e]), c.A[(offset * 7) + e]); // rows(wᵢsᵢAᵢ), one fp32 rounding
            }

            for (int o = 0; o < 5; o++)
            {
                for (int q = 0; q < f.Rank; q++)
                {
                    Assert.Equal(f.B[(o * f.Rank) + q], c.B[(o * 6) + offset + q]);
                }
            }

            offset += f.Rank;
        }

        // B·A = Σ wᵢsᵢBᵢAᵢ up to the fp32 rounding of the scaled A rows (≤ 2⁻²⁴ relative, |terms| ≤ 6).
        Close(Delta(c), WeightedDelta(adapters, weights), 1e-5, "cat ΔW");
    }

    /// <summary>linear: A = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ (A carries the sign).</summary>
    [Fact]
    public void LinearCombinesFactorsWithTheSignOnA()
    {
        var adapters = new[] { Factors(3, 6, 4, 2.0, 11), Factors(3, 6, 4, 0.5, 13) };
        var c = AdapterCombination.Combine(adapters, [0.7, -0.3], new() { Type = AdapterCombinationType.Linear });
        double c1 = Math.Sqrt(0.7 * 2.0), c2 = Math.Sqrt(0.3 * 0.5);
        Assert.Equal(3, c.Rank);
        for (int e = 0; e < c.A.Length; e++)
        {
            Assert.Equal((float)((c1 * adapters[0].A[e]) - (c2 * adapters[1].A[e])), c.A[e]);
        }

        for (int e = 0; e < c.B.Length; e++)
        {
            Assert.Equal((float)((c1 * adapters[0].B[e]) + (c2 * adapters[1].B[e])), c.B[e]);
        }
    }

    /// <summary>PEFT combines a single adapter with "linear" whatever the type: exact w·s·B·A at the adapter's own rank.</summary>
    [Fact]
    public void SingleAdapterIsLinearWhateverTheType()
    {
        var f = Factors(4, 9, 6, 1.5, 21);
        foreach (var type in Enum.GetValues<AdapterCombinationType>())
        {
            var c = AdapterCombination.Combine([f], [-2.0], new() { Type = type, SvdRank = 1, Density = 0.5 });
            Assert.Equal(4, c.Rank);
            Assert.Equal((float)(-Math.Sqrt(3.0) * f.A[0]), c.A[0]);
            Assert.Equal((float)(Math.Sqrt(3.0) * f.B[0]), c.B[0]);
            Close(Delta(c), WeightedDelta([f], [-2.0]), 1e-5, type.ToString());
        }
    }

    [Fact]
    public void FactorwiseTypesNeedEqualRanks()
    {
        var adapters = new[] { Factors(2, 6, 4, 1, 1), Factors(3, 6, 4, 1, 2) };
        foreach (var type in new[] { AdapterCombinationType.Linear, AdapterCombinationType.Ties, AdapterCombinationType.DareLinear,
                     AdapterCombinationType.DareTies, AdapterCombinationType.MagnitudePrune })
        {
            var ex = Assert.Throws<ArgumentException>(() => AdapterCombination.Combine(adapters, [1, 1], new() { Type = type, Density = 0.5 }));
            Assert.Contains("equal rank", ex.Message);
            Assert.Contains("[2, 3]", ex.Message);
        }
    }

    /// <summary>ΔW built with known singular values 5, 4, 3, 2, 1: the rank-k result is U_k·Σ_k·V_kᵀ and its error is Σ_{j>k} σ_j².</summary>
    [Fact]
    public void SvdRecoversKnownSingularValues()
    {
        var (inF, outF) = (9, 7);
        var u = Orthonormal(outF, 5, 1);
        var v = Orthonormal(inF, 5, 2);
        double[] sigma = [5, 4, 3, 2, 1];
        LoraFactors Part(int from, int count)
        {
            var a = new float[count * inF];
            var b = new float[outF * count];
            for (int q = 0; q < count; q++)
            {
                for (int p = 0; p < inF; p++)
                {
                    a[(q * inF) + p] = (float)v[p, from + q];
                }

                for (int o = 0; o < outF; o++)
                {
                    b[(o * count) + q] = (float)(u[o, from + q] * sigma[from + q]);
                }
            }

            return new LoraFactors(a, b, count, inF, outF, 2.0);
        }

        var adapters = new[] { Part(0, 3), Part(3, 2) };
        var delta = WeightedDelta(adapters, [0.5, 0.5]); // w·s = 1
        foreach (var (k, residual) in new[] { (1, 16 + 9 + 4 + 1.0), (2, 9 + 4 + 1.0), (3, 4 + 1.0), (5, 0.0) })
        {
            var c = AdapterCombination.Combine(adapters, [0.5, 0.5], new() { SvdRank = k });
            Assert.Equal(k, c.Rank);
            Assert.Equal(1.0, c.Scale);

            // The factors are fp32 (2⁻²⁴ relative), so ‖error‖² carries ~1e-6 of ‖ΔW‖² = 55.
            Assert.Equal(residual, SquaredNorm(Minus(delta, Delta(c))), 1e-4);
            for (int j = 0; j < k; j++)
            {
                double columnNorm = Math.Sqrt(Enumerable.Range(0, outF).Sum(o => (double)c.B[(o * k) + j] * c.B[(o * k) + j]));
                Assert.Equal(sigma[j], columnNorm, 1e-5);
            }
        }

        Assert.Equal(3, AdapterCombination.Combine(adapters, [0.5, 0.5]).Rank); // default svd_rank = max rᵢ
    }

    /// <summary>
    /// On random factors the svd result is the truncated SVD of Σ wᵢsᵢBᵢAᵢ: A's rows are orthonormal, ΔW·Aᵀ = B (right
    /// singular vectors), B's columns are orthogonal with decreasing norms σⱼ, and ‖ΔW − B·A‖² = ‖ΔW‖² − Σ σⱼ² (Eckart–Young).
    /// Covers the low-rank path (Σ rᵢ &lt; min(out, in)) and the dense fallback, and ranks past the matrix rank (zero-padded).
    /// </summary>
    [Theory]
    [InlineData(12, 10, new[] { 2, 3 }, 3)]
    [InlineData(12, 10, new[] { 2, 3 }, 5)]
    [InlineData(12, 10, new[] { 2, 3 }, 7)]
    [InlineData(6, 4, new[] { 3, 3 }, 2)]
    [InlineData(4, 6, new[] { 3, 3 }, 5)]
    [InlineData(30, 5, new[] { 4, 4, 1 }, 4)]
    public void SvdIsTheTruncatedSvdOfTheWeightedSum(int inF, int outF, int[] ranks, int k)
    {
        var adapters = ranks.Select((r, i) => Factors(r, inF, outF, 0.5 + i, (10 * i) + inF)).ToArray();
        double[] weights = ranks.Select((_, i) => i % 2 == 0 ? 0.8 : -0.6).ToArray();
        var delta = WeightedDelta(adapters, weights);
        var c = AdapterCombination.Combine(adapters, weights, new() { Type = AdapterCombinationType.Svd, SvdRank = k });
        CheckTruncatedSvd(delta, c, inF, outF, k, Math.Min(ranks.Sum(), Math.Min(inF, outF)));
    }

    /// <summary>The pruned svd variants truncate the task-vector merge of the ΔWᵢ = sᵢBᵢAᵢ with weights wᵢ.</summary>
    [Theory]
    [InlineData(AdapterCombinationType.TiesSvd)]
    [InlineData(AdapterCombinationType.DareLinearSvd)]
    [InlineData(AdapterCombinationType.DareTiesSvd)]
    [InlineData(AdapterCombinationType.MagnitudePruneSvd)]
    public void PrunedSvdVariantsTruncateTheirMergedDelta(AdapterCombinationType type)
    {
        var (inF, outF) = (8, 6);
        var adapters = new[] { Factors(2, inF, outF, 2.0, 41), Factors(3, inF, outF, 0.5, 43) };
        double[] weights = [0.9, -0.4];
        var options = new AdapterCombinationOptions { Type = type, Density = 0.6, Seed = 99, MajoritySignMethod = MajoritySignMethod.Frequency };
        var deltas = adapters.Select(Delta).ToList();
        ulong[] streams = [0, 1];
        var merged = type switch
        {
            AdapterCombinationType.TiesSvd => TaskVectorMerge.Ties(deltas, weights, 0.6, MajoritySignMethod.Frequency),
            AdapterCombinationType.DareLinearSvd => TaskVectorMerge.DareLinear(deltas, weights, 0.6, 99, streams),
            AdapterCombinationType.DareTiesSvd => TaskVectorMerge.DareTies(deltas, weights, 0.6, MajoritySignMethod.Frequency, 99, streams),
            _ => TaskVectorMerge.MagnitudePrune(deltas, weights, 0.6),
        };

        var full = AdapterCombination.Combine(adapters, weights, options with { SvdRank = outF });
        Close(Delta(full), merged, 1e-5, "full-rank reconstruction");
        var truncated = AdapterCombination.Combine(adapters, weights, options with { SvdRank = 2 });
        CheckTruncatedSvd(merged, truncated, inF, outF, 2, outF);
    }

    private static void CheckTruncatedSvd(double[] delta, LoraFactors c, int inF, int outF, int k, int matrixRank)
    {
        Assert.Equal(k, c.Rank);
        int kept = Math.Min(k, matrixRank);
        double previous = double.PositiveInfinity, captured = 0;
        for (int j = 0; j < k; j++)
        {
            for (int j2 = 0; j2 < k; j2++)
            {
                double dot = Enumerable.Range(0, inF).Sum(p => (double)c.A[(j * inF) + p] * c.A[(j2 * inF) + p]);
                double expected = j == j2 && j < kept ? 1 : 0;
                Assert.True(Math.Abs(dot - expected) < 1e-5, $"A·Aᵀ[{j},{j2}] = {dot}"); // fp32 factors: ~in·2⁻²⁴
            }

            double sigma2 = Enumerable.Range(0, outF).Sum(o => (double)c.B[(o * k) + j] * c.B[(o * k) + j]);
            Assert.True(sigma2 <= previous * (1 + 1e-6), $"σ² not decreasing at {j}");
            previous = sigma2;
            captured += sigma2;
            for (int o = 0; o < outF; o++)
            {
                double projected = Enumerable.Range(0, inF).Sum(p => delta[(o * inF) + p] * c.A[(j * inF) + p]);
                Assert.True(Math.Abs(projected - c.B[(o * k) + j]) < 1e-4, $"(ΔW·Aᵀ)[{o},{j}] = {projected} but B = {c.B[(o * k) + j]}");
            }
        }

        double total = SquaredNorm(delta);
        Assert.Equal(total - captured, SquaredNorm(Minus(delta, Delta(c))), 1e-4 * Math.Max(1, total));
    }

    /// <summary>Columns of a seeded random matrix, Gram–Schmidt orthonormalised: [rows, cols].</summary>
    private static double[,] Orthonormal(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var m = new double[rows, cols];
        for (int j = 0; j < cols; j++)
        {
            for (int i = 0; i < rows; i++)
            {
                m[i, j] = (rng.NextDouble() * 2) - 1;
            }

            for (int pass = 0; pass < 2; pass++)
            {
                for (int j2 = 0; j2 < j; j2++)
                {
                    double dot = Enumerable.Range(0, rows).Sum(i => m[i, j] * m[i, j2]);
                    for (int i = 0; i < rows; i++)
                    {
                        m[i, j] -= dot * m[i, j2];
                    }
                }
            }

            double norm = Math.Sqrt(Enumerable.Range(0, rows).Sum(i => m[i, j] * m[i, j]));
            for (int i = 0; i < rows; i++)
            {
                m[i, j] /= norm;
            }
        }

        return m;
    }
}
