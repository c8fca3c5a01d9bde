using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Generation with the KV cache equals the full forward for prompt, P- and prefix tuning (GQA with head_dim from the config included).</summary>
public class PromptLearningCacheTests
{
    public static TheoryData<string, bool, bool> Cases() => new()
    {
        { PromptLearningConfig.PromptTuningType, false, false },
        { PromptLearningConfig.PTuningType, false, true },
        { PromptLearningConfig.PrefixTuningType, false, false },
        { PromptLearningConfig.PrefixTuningType, true, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void CachedStepsEqualTheFullForward(string type, bool projection, bool gqa)
    {
        var model = LlamaForCausalLM.Create(gqa ? PromptLearningTests.Gqa : LlamaConfig.Tiny(40), 12);
        var adapter = PromptLearningAdapter.Attach(model, new PromptLearningConfig(type) { NumVirtualTokens = 3, PrefixProjection = projection, EncoderHiddenSize = type == PromptLearningConfig.PromptTuningType ? null : 6 }, 4);
        int vocab = model.Config.VocabSize, batch = 2;
        int[] prompts = [4, 9, 1, 30, 2, 7, 7, 11];
        int[] steps = [13, 5, 22, 6, 0, 39];
        using var scope = Tape.NoGrad();
        using var cache = model.CreateCache(adapter.NumVirtualTokens + 4 + 3, batch);
        var rows = new List<float[]> { model.Forward(prompts, batch, cache).Data };
        Assert.Equal(3 + 4, cache.Length);
        for (int s = 0; s < 3; s++)
        {
            rows.Add(model.Forward([steps[2 * s], steps[(2 * s) + 1]], batch, cache).Data);
        }

        Assert.Equal(3 + 4 + 3, cache.Length);
        int[] full = [.. prompts[..4], steps[0], steps[2], steps[4], .. prompts[4..], steps[1], steps[3], steps[5]];
        var expected = model.Forward(full, batch).Data;
        var cached = new float[expected.Length];
        for (int b = 0; b < batch; b++)
        {
            rows[0].AsSpan(b * 4 * vocab, 4 * vocab).CopyTo(cached.AsSpan(b * 7 * vocab));
            for (int s = 0; s < 3; s++)
            {
                rows[s + 1].AsSpan(b * vocab, vocab).CopyTo(cached.AsSpan(((b * 7) + 4 + s) * vocab));
            }
        }

        TestUtil.AssertClose(cached, expected, 1e-4, 1e-4, $"{type} cached vs full");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GenerateEqualsGreedyOverTheFullForward(string type, bool projection, bool gqa)
    {
        var model = LlamaForCausalLM.Create(gqa ? PromptLearningTests.Gqa : LlamaConfig.Tiny(40), 13);
        PromptLearningAdapter.Attach(model, new PromptLearningConfig(type) { NumVirtualTokens = 4, PrefixProjection = projection }, 5);
        int[] prompt = [1, 5, 9];
        var generated = model.Generate(prompt, 6);
        Assert.Equal(6, generated.Length);
        var sequence = prompt.ToList();
        foreach (int token in generated)
        {
            var logits = PromptLearningTests.Logits(model, [.. sequence]);
            Assert.Equal(LlamaForCausalLM.ArgMax(logits.AsSpan(logits.Length - model.Config.VocabSize)), token);
            sequence.Add(token);
        }
    }
}
