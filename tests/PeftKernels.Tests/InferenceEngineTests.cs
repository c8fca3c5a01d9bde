// The engine's continuous batching: many requests with different adapters, prompt lengths and limits
// run as one batch (prompts prefilled in chunks under a small token budget, sequences queued beyond
// the running limit) and each must produce what it produces alone; seeded sampling must not depend on
// the batch; a KV pool too small for everyone preempts and recomputes without changing outputs; a
// shared prompt prefix is computed once; cancellation, stop tokens and limits finish sequences and
// return every block.
using PeftKernels.Engine;

namespace PeftKernels.Tests;

public sealed class InferenceEngineTests
{
    private static readonly string?[] Mix = [null, "r1", "r8", "r32", "dora", "ia3", "r8", null, "r32"];

    private static int[] Prompt(int seed, int length, int vocab)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => rng.Next(vocab))];
    }

    [Fact]
    public void GreedyContinuousBatchEqualsEachRequestAlone()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 6, MaxRunningSequences = 4, BlockSize = 4 });
        var requests = Mix.Select((a, i) => new EngineRequest(Prompt(i, 2 + (i * 5 % 13), fx.Vocab), a,
            new SamplingParams(MaxTokens: 3 + (i % 4)))).ToList();
        var results = engine.Run(requests);
        for (int i = 0; i < requests.Count; i++)
        {
            var expected = fx.Greedy(requests[i].PromptTokens, requests[i].Sampling!.MaxTokens, requests[i].Adapter);
            Assert.Equal(expected, results[i].Tokens);
            Assert.Equal(FinishReason.Length, results[i].Finish);
        }

        Assert.True(engine.Stats.Steps > Mix.Length, "the token budget of 6 must split the prompts over several steps");
        Assert.Equal(0, engine.Pool.UsedBlocks);
        Assert.True(engine.IsIdle);
    }

    [Fact]
    public void SeededSamplingDoesNotDependOnTheBatch()
    {
        using var fx = new EngineFixture();
        var sampling = new SamplingParams(Temperature: 0.9f, TopP: 0.9f, TopK: 20, Seed: 7, MaxTokens: 12);
        var request = new EngineRequest(Prompt(99, 5, fx.Vocab), "r8", sampling);
        int[] alone;
        using (var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8 }))
        {
            alone = engine.Run([request])[0].Tokens;
        }

        using (var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 7, MaxRunningSequences = 3 }))
        {
            var others = Mix.Select((a, i) => new EngineRequest(Prompt(i, 3 + i, fx.Vocab), a, sampling with { Seed = i })).ToList();
            var results = engine.Run([.. others.Take(4), request, .. others.Skip(4)]);
            Assert.Equal(alone, results[4].Tokens);
            Assert.Equal(12, alone.Length);
            Assert.Contains(results.Take(4), r => !r.Tokens.SequenceEqual(alone));
        }
    }

    [Fact]
    public void TooFewKvBlocksPreemptAndRecomputeWithoutChangingOutputs()
    {
        using var fx = new EngineFixture();
        var requests = Enumerable.Range(0, 4).Select(i => new EngineRequest(Prompt(i + 10, 6, fx.Vocab), Mix[i + 1], new SamplingParams(MaxTokens: 10))).ToList();
        using var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 32, MaxRunningSequences = 4, BlockSize = 4, KvBlocks = 9 });
        var results = engine.Run(requests);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(fx.Greedy(requests[i].PromptTokens, 10, requests[i].Adapter), results[i].Tokens);
        }

        Assert.True(engine.Stats.Preemptions > 0, "4 sequences of 16 positions cannot fit 9 blocks of 4 at once");
        Assert.Equal(0, engine.Pool.UsedBlocks);
    }

    [Fact]
    public void ASharedPromptPrefixIsComputedOnce()
    {
        using var fx = new EngineFixture();
        var prefix = Prompt(5, 21, fx.Vocab);
        using var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 64, BlockSize = 4 });
        var first = engine.Submit(new EngineRequest(prefix, "r1", new SamplingParams(MaxTokens: 8)));
        engine.Step();
        var second = engine.Submit(new EngineRequest([.. prefix, 3, 4], "r1", new SamplingParams(MaxTokens: 4)));
        engine.RunUntilIdle();
        Assert.Equal(20, second.Result!.CachedPromptTokens); // 5 full blocks of 4 (the 21st position is computed)
        Assert.Equal(0, first.Result!.CachedPromptTokens);
        Assert.Equal(fx.Greedy([.. prefix, 3, 4], 4, "r1"), second.Result!.Tokens);
        Assert.Equal(fx.Greedy(prefix, 8, "r1"), first.Result!.Tokens);
        Assert.Equal(0, engine.Pool.UsedBlocks);
    }

    [Fact]
    public void APromptPrefixIsSharedOnlyUnderTheSameAdapter()
    {
        // Keys and values depend on the adapter (and on the base without one): blocks computed for one adapter must not be
        // reused by a request with another, or with none, even when the prompt tokens are the same.
        using var fx = new EngineFixture();
        var prefix = Prompt(6, 21, fx.Vocab);
        using var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 64, BlockSize = 4 });
        var first = engine.Submit(new EngineRequest(prefix, "r8", new SamplingParams(MaxTokens: 8)));
        engine.Step();
        var others = new[] { null, "r32", "r8" }.Select(a => engine.Submit(new EngineRequest([.. prefix, 3], a, new SamplingParams(MaxTokens: 4)))).ToList();
        engine.RunUntilIdle();
        Assert.Equal(0, others[0].Result!.CachedPromptTokens);
        Assert.Equal(0, others[1].Result!.CachedPromptTokens);
        Assert.Equal(20, others[2].Result!.CachedPromptTokens);
        Assert.Equal(fx.Greedy([.. prefix, 3], 4, null), others[0].Result!.Tokens);
        Assert.Equal(fx.Greedy([.. prefix, 3], 4, "r32"), others[1].Result!.Tokens);
        Assert.Equal(fx.Greedy([.. prefix, 3], 4, "r8"), others[2].Result!.Tokens);
        Assert.Equal(fx.Greedy(prefix, 8, "r8"), first.Result!.Tokens);
        Assert.Equal(0, engine.Pool.UsedBlocks);
    }

    [Fact]
    public void CancelStopTokensAndLimitsFinishSequencesAndFreeTheirBlocks()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine(new EngineOptions { MaxBatchTokens = 64, BlockSize = 4 });
        var prompt = Prompt(1, 4, fx.Vocab);
        var greedy = fx.Greedy(prompt, 12, "r32");
        var cancelled = engine.Submit(new EngineRequest(prompt, "r32", new SamplingParams(MaxTokens: 100)));
        var stopped = engine.Submit(new EngineRequest(prompt, "r32", new SamplingParams(MaxTokens: 100, StopTokenIds: [greedy[2]])));
        var none = engine.Submit(new EngineRequest(prompt, null, new SamplingParams(MaxTokens: 0)));
        var streamed = new List<int>();
        stopped.TokenGenerated = (_, token) => streamed.Add(token);
        engine.Step();
        engine.Step();
        cancelled.Cancel();
        engine.RunUntilIdle();
        Assert.Equal(FinishReason.Cancelled, cancelled.Result!.Finish);
        Assert.Equal(greedy[..2], cancelled.Result!.Tokens);
        Assert.Equal(FinishReason.Stop, stopped.Result!.Finish);
        Assert.Equal(greedy[..(Array.IndexOf(greedy, greedy[2]) + 1)], stopped.Result!.Tokens);
        Assert.Equal(stopped.Result!.Tokens, streamed);
        Assert.Equal(FinishReason.Length, none.Result!.Finish);
        Assert.Empty(none.Result!.Tokens);
        Assert.Equal(0, engine.Pool.UsedBlocks);

        // The maximum sequence length ends generation too.
        using var short_ = fx.Engine(new EngineOptions { MaxSequenceLength = 9 });
        var result = short_.Run([new EngineRequest(prompt, null, new SamplingParams(MaxTokens: 100))])[0];
        Assert.Equal(FinishReason.Length, result.Finish);
        Assert.Equal(5, result.Tokens.Length);
    }

    [Fact]
    public void BadRequestsAreRefusedAtSubmit()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine(new EngineOptions { MaxSequenceLength = 16 });
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => engine.Submit(new EngineRequest([]))).Message);
        Assert.Contains("token id 40 at position 1", Assert.Throws<ArgumentException>(() => engine.Submit(new EngineRequest([1, 40]))).Message);
        Assert.Contains("maximum sequence length is 16", Assert.Throws<ArgumentException>(() => engine.Submit(new EngineRequest(new int[16]))).Message);
        Assert.Contains("'nope' is not known", Assert.Throws<KeyNotFoundException>(() => engine.Submit(new EngineRequest([1], "nope"))).Message);
        Assert.Throws<ArgumentException>(() => engine.Submit(new EngineRequest([1], null, new SamplingParams(Temperature: -1))));
        Assert.Contains("MaxBatchTokens", Assert.Throws<ArgumentException>(() => new InferenceEngine(fx.NewModel(), new EngineOptions { MaxBatchTokens = 0 })).Message);
    }
}
