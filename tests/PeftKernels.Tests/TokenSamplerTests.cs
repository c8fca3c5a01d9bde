using System.Numerics.Tensors;
using PeftKernels.Engine;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The per-sequence sampler: greedy is torch.argmax (first on ties), top_k 1 is greedy, top-k and top-p keep exactly the
/// set a full sort would (boundaries included), draws follow softmax(logits / T) (chi-square, fixed seed), a seed fixes
/// the draws whatever else shares the batch, no allocation after warm-up, and non-finite rows and bad settings are refused.
/// </summary>
public class TokenSamplerTests
{
    private static float[] RandomLogits(int vocab, int seed, float scale = 3f)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale)];
    }

    /// <summary>The kept set by a full sort: top-k by logit (ties with the k-th kept), then the top-p prefix over w sorted descending (ties by id).</summary>
    private static bool[] ReferenceKept(float[] logits, SamplingParams p)
    {
        int v = logits.Length;
        var kept = Enumerable.Repeat(true, v).ToArray();
        if (p.TopK > 0 && p.TopK < v)
        {
            float kth = logits.OrderByDescending(x => x).ElementAt(p.TopK - 1);
            kept = [.. logits.Select(x => x >= kth)];
        }

        var ids = Enumerable.Range(0, v).Where(i => kept[i]).ToArray();
        var w = ids.Select(i => logits[i]).ToArray();
        TensorPrimitives.Subtract(w, logits.Max(), w);
        TensorPrimitives.Divide(w, p.Temperature, w);
        TensorPrimitives.Exp(w, w);
        if (p.TopP >= 1)
        {
            return kept;
        }

        double target = p.TopP * (double)TensorPrimitives.Sum(w), before = 0;
        var result = new bool[v];
        foreach (int j in Enumerable.Range(0, ids.Length).OrderByDescending(j => w[j]).ThenBy(j => ids[j]))
        {
            if (before >= target)
            {
                break;
            }

            result[ids[j]] = true;
            before += w[j];
        }

        return result;
    }

    [Fact]
    public void GreedyIsTheFirstArgmaxAndDrawsNothing()
    {
        float[][] rows = [[1f, 3f, 3f, 2f], [5f, 5f], [-0f, 0f, -1f], [-7f], [2f, 1f, 9f, 9f, 9f], RandomLogits(1000, 4)];
        foreach (var row in rows)
        {
            int expected = LlamaForCausalLM.ArgMax(row);
            foreach (var p in new[] { new SamplingParams(), new SamplingParams(0, TopP: 0.3f, TopK: 3, Seed: 1), new SamplingParams(2.5f, TopK: 1, Seed: 2), new SamplingParams(1e-3f, TopP: 0.01f, TopK: 1) })
            {
                var sampler = new TokenSampler(p);
                Assert.True(p.IsGreedy);
                for (int i = 0; i < 5; i++)
                {
                    Assert.Equal(expected, sampler.Next(row));
                }

                Assert.Equal(0, sampler.Draws);
            }
        }

        Assert.Equal(1, new TokenSampler(new SamplingParams()).Next([1f, 3f, 3f, 2f]));
        Assert.Equal(0, new TokenSampler(new SamplingParams()).Next([-0f, 0f, -1f]));
    }

    [Theory]
    [InlineData(0.5f, new[] { 0, 1, 2, 3 })]
    [InlineData(0.125f, new[] { 0 })]
    [InlineData(0.25f, new[] { 0, 1 })]
    [InlineData(0.2500001f, new[] { 0, 1, 2 })]
    [InlineData(1f, new[] { 0, 1, 2, 3, 4, 5, 6, 7 })]
    public void TopPStopsExactlyWhereTheMassReachesIt(float topP, int[] expected)
    {
        // Eight equal logits: each token has mass exactly 1/8, so the nucleus of top_p = j/8 is exactly the first j ids.
        float[] logits = [2f, 2f, 2f, 2f, 2f, 2f, 2f, 2f];
        var sampler = new TokenSampler(new SamplingParams(0.7f, topP, Seed: 5));
        Assert.Equal(expected, Enumerable.Range(0, 8).Where(i => sampler.KeptMask(logits)[i]));
        var drawn = Enumerable.Range(0, 4000).Select(_ => sampler.Next(logits)).Distinct().Order();
        Assert.Equal(expected, drawn);
    }

    [Theory]
    [InlineData(1, new[] { 1, 2 })]
    [InlineData(2, new[] { 1, 2 })]
    [InlineData(3, new[] { 1, 2, 3 })]
    [InlineData(4, new[] { 0, 1, 2, 3, 4 })]
    [InlineData(5, new[] { 0, 1, 2, 3, 4 })]
    [InlineData(9, new[] { 0, 1, 2, 3, 4, 5 })]
    public void TopKKeepsTheKLargestAndTheirTies(int k, int[] expected)
    {
        float[] logits = [0.5f, 3f, 3f, 2f, 0.5f, -1f];
        var p = new SamplingParams(1.5f, TopK: k, Seed: 3);
        if (k == 1)
        {
            // top_k 1 is greedy: the first of the two tied maxima only.
            expected = [1];
        }

        var sampler = new TokenSampler(p);
        var drawn = Enumerable.Range(0, 4000).Select(_ => sampler.Next(logits)).Distinct().Order();
        Assert.Equal(expected, drawn);
        if (k > 1)
        {
            Assert.Equal(ReferenceKept(logits, p), sampler.KeptMask(logits));
        }
    }

    [Theory]
    [InlineData(50, 0.9f, 0, 1f)]
    [InlineData(1000, 0.9f, 0, 0.8f)]
    [InlineData(1000, 0.5f, 40, 1.3f)]
    [InlineData(32000, 0.95f, 0, 1f)]
    [InlineData(32000, 0.9f, 50, 0.7f)]
    [InlineData(32000, 1f, 200, 2f)]
    [InlineData(32000, 0.3f, 0, 0.5f)]
    [InlineData(17, 0.999f, 3, 1f)]
    public void TheKeptSetEqualsAFullSort(int vocab, float topP, int topK, float temperature)
    {
        for (int seed = 0; seed < 6; seed++)
        {
            var logits = RandomLogits(vocab, seed, scale: seed % 2 == 0 ? 3f : 12f);
            if (seed == 4)
            {
                // Many exact ties: logits rounded to a coarse grid.
                logits = [.. logits.Select(x => MathF.Round(x))];
            }

            var p = new SamplingParams(temperature, topP, topK, Seed: seed);
            Assert.Equal(ReferenceKept(logits, p), new TokenSampler(p).KeptMask(logits));
        }
    }

    [Theory]
    [InlineData(0.7f, 1f, 0)]
    [InlineData(1f, 1f, 0)]
    [InlineData(2f, 0.8f, 0)]
    [InlineData(1.2f, 0.9f, 5)]
    public void DrawsFollowTheRenormalizedSoftmax(float temperature, float topP, int topK)
    {
        float[] logits = [0.3f, 2f, -1f, 1.5f, 0f, 1.9f, -0.5f, 0.8f, 1f, -2f];
        var p = new SamplingParams(temperature, topP, topK, Seed: 12345);
        var kept = ReferenceKept(logits, p);
        var prob = logits.Select((x, i) => kept[i] ? Math.Exp(x / temperature) : 0).ToArray();
        double sum = prob.Sum();
        const int draws = 40000;
        var counts = new int[logits.Length];
        var sampler = new TokenSampler(p);
        for (int i = 0; i < draws; i++)
        {
            counts[sampler.Next(logits)]++;
        }

        Assert.Equal(draws, sampler.Draws);
        double chi2 = 0;
        int df = -1;
        for (int i = 0; i < logits.Length; i++)
        {
            if (!kept[i])
            {
                Assert.Equal(0, counts[i]);
                continue;
            }

            double expected = draws * prob[i] / sum;
            chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
            df++;
        }

        // 99.99% quantile of chi-square with df ≤ 9 is below 34; the seed is fixed, so this is deterministic.
        Assert.True(df >= 2, $"only {df + 1} tokens kept");
        Assert.True(chi2 < 34, $"chi-square {chi2:F1} with {df} degrees of freedom");
    }

    [Fact]
    public void ASeedFixesTheDrawsWhateverElseSharesTheBatch()
    {
        var logits = RandomLogits(500, 9, scale: 1f);
        var other = RandomLogits(500, 10, scale: 5f);
        var p = new SamplingParams(1f, 0.95f, 100, Seed: 42);
        var alone = new TokenSampler(p);
        var solo = Enumerable.Range(0, 64).Select(_ => alone.Next(logits)).ToArray();

        // The same seed interleaved with other sequences sharing one scratch gives the same tokens.
        var scratch = new SamplerScratch();
        var again = new TokenSampler(p);
        var neighbours = new[] { new TokenSampler(p with { Seed = 7 }), new TokenSampler(p with { Seed = null, TopK = 0 }), new TokenSampler(new SamplingParams()) };
        var batched = new int[64];
        for (int i = 0; i < 64; i++)
        {
            foreach (var n in neighbours)
            {
                n.Next(other, scratch);
            }

            batched[i] = again.Next(logits, scratch);
        }

        Assert.Equal(solo, batched);
        var different = new TokenSampler(p with { Seed = 43 });
        Assert.NotEqual(solo, Enumerable.Range(0, 64).Select(_ => different.Next(logits)).ToArray());
        Assert.Equal(42, again.Seed);
        Assert.Equal(64, again.Draws);
    }

    [Theory]
    [InlineData(0.8f, 1f, 0)]
    [InlineData(0.8f, 0.9f, 0)]
    [InlineData(0.8f, 1f, 50)]
    [InlineData(1.1f, 0.95f, 40)]
    [InlineData(0f, 1f, 0)]
    public void NoAllocationAfterWarmUp(float temperature, float topP, int topK)
    {
        var rows = Enumerable.Range(0, 4).Select(s => RandomLogits(32000, s)).ToArray();
        var sampler = new TokenSampler(new SamplingParams(temperature, topP, topK, Seed: 1, StopTokenIds: [2, 7]));
        int sink = 0, call = 0;

        // Warm-up and the smallest of a few trials (ZeroAllocation): a first-time JIT or runtime allocation is not per call.
        long allocated = ZeroAllocation.OnThisThread(() =>
        {
            sink += sampler.Next(rows[call++ % 4]);
            sink += sampler.IsStop(sink) ? 1 : 0;
        });
        Assert.Equal(0, allocated);
        Assert.True(sink >= 0);
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NonFiniteRowsAreRefused(float bad)
    {
        foreach (var p in new[] { new SamplingParams(), new SamplingParams(1f, 0.9f, 5, Seed: 1) })
        {
            var row = new float[] { 0.5f, 1f, 2f, bad, 1f, bad };
            var e = Assert.Throws<InvalidDataException>(() => new TokenSampler(p).Next(row));
            Assert.Equal($"the logits are not finite: {bad.ToString(System.Globalization.CultureInfo.InvariantCulture)} at vocabulary index 3", e.Message);
        }

        Assert.Throws<ArgumentException>(() => new TokenSampler(new SamplingParams()).Next([]));
    }

    [Theory]
    [InlineData(float.NaN, 1f, 0, 16, "Temperature", "temperature must be finite and >= 0; got NaN.")]
    [InlineData(-0.5f, 1f, 0, 16, "Temperature", "temperature must be finite and >= 0; got -0.5.")]
    [InlineData(float.PositiveInfinity, 1f, 0, 16, "Temperature", "temperature must be finite and >= 0; got Infinity.")]
    [InlineData(1f, 0f, 0, 16, "TopP", "top_p must be in (0, 1]; got 0.")]
    [InlineData(1f, 1.5f, 0, 16, "TopP", "top_p must be in (0, 1]; got 1.5.")]
    [InlineData(1f, float.NaN, 0, 16, "TopP", "top_p must be in (0, 1]; got NaN.")]
    [InlineData(1f, 1f, -1, 16, "TopK", "top_k must be >= 0 (0 = off); got -1.")]
    [InlineData(1f, 1f, 0, -3, "MaxTokens", "max_tokens must be >= 0; got -3.")]
    public void BadSettingsAreRefusedByName(float temperature, float topP, int topK, int maxTokens, string field, string message)
    {
        var p = new SamplingParams(temperature, topP, topK, MaxTokens: maxTokens);
        var e = Assert.Throws<ArgumentException>(p.Validate);
        Assert.Equal(field, e.ParamName);
        Assert.StartsWith(message, e.Message);
        Assert.Throws<ArgumentException>(() => new TokenSampler(p));
        var stops = Assert.Throws<ArgumentException>(() => new SamplingParams(StopTokenIds: [2, -1]).Validate());
        Assert.StartsWith("stop_token_ids must hold token ids >= 0; got -1 at position 1.", stops.Message);
    }

    [Fact]
    public void StopTokensAndDrawnSeeds()
    {
        var sampler = new TokenSampler(new SamplingParams(StopTokenIds: [5, 9]));
        Assert.True(sampler.IsStop(9));
        Assert.False(sampler.IsStop(6));
        Assert.False(new TokenSampler(new SamplingParams()).IsStop(0));

        // Without a seed each sampler draws its own: 8 samplers almost surely do not all share one seed.
        Assert.True(Enumerable.Range(0, 8).Select(_ => new TokenSampler(new SamplingParams(1f)).Seed).Distinct().Count() > 1);
    }
}
