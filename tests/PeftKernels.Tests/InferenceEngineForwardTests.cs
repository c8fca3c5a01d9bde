// The engine's batched forward against the model run one sequence at a time: one step holds prompts
// of different lengths, each with its own adapter (LoRA of ranks 1, 8 and 32, DoRA, IA³, none), then a
// decode step; every sequence's logits must equal the reference model's with that adapter alone,
// within fp32 rounding, on an fp32 and on a 4-bit (NF4) base, on every SIMD path.
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

public sealed class InferenceEngineForwardTests
{
    public static TheoryData<bool, SimdPath> Cases()
    {
        var data = new TheoryData<bool, SimdPath>();
        foreach (var path in new[] { SimdPath.Vector512, SimdPath.Vector256, SimdPath.Scalar }.Where(KernelOptions.IsSupported))
        {
            data.Add(false, path);
        }

        data.Add(true, SimdPath.Auto);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MixedAdapterBatchEqualsEachSequenceAlone(bool quantized, SimdPath path)
    {
        using var fx = new EngineFixture(quantized);
        var options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8, Path = path };
        using var engine = fx.Engine(options);
        var model = fx.NewModel();
        var c = model.Config;
        var forward = new BatchForward(model, 64, 8, 256, options);
        var pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, 4, 64);
        // The last two sequences share an adapter next to each other: the engine makes them one SGMV segment.
        string?[] adapters = [null, "r1", "r8", "r32", "dora", "ia3", "r8", "r8"];
        var rng = new Random(3);
        var prompts = adapters.Select((_, i) => Enumerable.Range(0, 1 + ((i * 3) % 9)).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
        var sequences = adapters.Select(_ => pool.CreateSequence()).ToArray();
        var batch = new StepBatch(64, 8);
        AdapterTable table = null!;
        var slots = adapters.Select(a => { var (t, s) = engine.TableAndSlot(a); table = t; return s; }).ToArray();
        table = engine.TableAndSlot(null).Table;

        // Step 1: every prompt whole.
        for (int i = 0; i < adapters.Length; i++)
        {
            foreach (int token in prompts[i])
            {
                sequences[i].Append(token);
            }

            batch.Add(sequences[i], prompts[i], 0, slots[i], wantsLogits: true);
        }

        var logits = forward.Run(batch, table).ToArray();
        for (int i = 0; i < adapters.Length; i++)
        {
            AssertRow(fx.Logits(prompts[i], adapters[i]), prompts[i].Length - 1, logits, batch.LogitRow[i], fx.Vocab, $"prefill of sequence {i} ({adapters[i] ?? "base"})");
        }

        // The check has teeth: every adapter moves the logits well beyond the tolerance.
        foreach (var name in EngineFixture.AdapterNames)
        {
            var probe = prompts[^1];
            var moved = fx.Logits(probe, name).Zip(fx.Logits(probe, null), (a, b) => Math.Abs(a - b)).Max();
            Assert.True(moved > 1e-2f, $"adapter {name} changes the logits by only {moved}");
        }

        // Step 2: one decode token each (different tokens).
        batch.Clear();
        for (int i = 0; i < adapters.Length; i++)
        {
            int token = ((7 * i) + 1) % fx.Vocab;
            sequences[i].Append(token);
            batch.Add(sequences[i], [token], prompts[i].Length, slots[i], wantsLogits: true);
            prompts[i] = [.. prompts[i], token];
        }

        logits = forward.Run(batch, table).ToArray();
        for (int i = 0; i < adapters.Length; i++)
        {
            AssertRow(fx.Logits(prompts[i], adapters[i]), prompts[i].Length - 1, logits, batch.LogitRow[i], fx.Vocab, $"decode of sequence {i} ({adapters[i] ?? "base"})");
        }

        // Steps of at most 4 rows take the decode path (fused q|k|v and gate|up GEMVs, inline norms): 4 rows, then 1 (IA³: its
        // feed-forward down_proj input scaling), then 3.
        foreach (var group in new[] { new[] { 0, 1, 2, 3 }, new[] { 5 }, new[] { 4, 6, 2 } })
        {
            batch.Clear();
            foreach (int i in group)
            {
                int token = (prompts[i].Length * 5) % fx.Vocab;
                sequences[i].Append(token);
                batch.Add(sequences[i], [token], prompts[i].Length, slots[i], wantsLogits: true);
                prompts[i] = [.. prompts[i], token];
            }

            logits = forward.Run(batch, table).ToArray();
            for (int g = 0; g < group.Length; g++)
            {
                int i = group[g];
                AssertRow(fx.Logits(prompts[i], adapters[i]), prompts[i].Length - 1, logits, batch.LogitRow[g], fx.Vocab,
                    $"decode-path step of sequence {i} ({adapters[i] ?? "base"})");
            }
        }
    }

    internal static void AssertRow(float[] expectedAll, int expectedRow, float[] actualAll, int actualRow, int vocab, string what)
    {
        var expected = expectedAll.AsSpan(expectedRow * vocab, vocab);
        var actual = actualAll.AsSpan(actualRow * vocab, vocab);
        float scale = 1f, worst = 0f;
        for (int j = 0; j < vocab; j++)
        {
            scale = Math.Max(scale, Math.Abs(expected[j]));
        }

        for (int j = 0; j < vocab; j++)
        {
            worst = Math.Max(worst, Math.Abs(expected[j] - actual[j]));
        }

        Assert.True(worst <= 2e-4f * scale, $"{what}: max |logit difference| {worst} > {2e-4f * scale} (max |logit| {scale}).");
    }
}
