// How far the integer 4-bit decode GEMV (EngineOptions.IntegerDecode) moves a 4-bit model's outputs
// from the bitsandbytes-exact fp32 path. Both paths decode the same token sequence (teacher forcing:
// the exact path's greedy tokens), one step at a time through the engine's decode path, so every step
// compares logits for the same context:
//   max logit error  = max over steps and vocabulary of |z_int − z_exact|, and the same relative to max |z_exact| of its row
//   greedy agreement = fraction of steps where argmax z_int = argmax z_exact
// plus the free-running agreement: the length of the common prefix of the two greedy generations.
using PeftKernels.Models;

namespace PeftKernels.Engine;

/// <summary>The integer decode path's deviation from the exact fp32 path on one model.</summary>
/// <param name="Steps">Decode steps compared (over all prompts).</param>
/// <param name="MaxAbsError">Largest |logit difference|.</param>
/// <param name="MaxRelativeError">Largest |logit difference| over the max |logit| of its row.</param>
/// <param name="MeanAbsError">Mean |logit difference| over all compared logits.</param>
/// <param name="GreedyAgreement">Fraction of steps with the same argmax.</param>
/// <param name="FreeRunningCommonPrefix">Mean over prompts of the common prefix length of the two free-running greedy generations.</param>
/// <param name="Tokens">Tokens generated per prompt.</param>
public sealed record DecodeAccuracyReport(int Steps, double MaxAbsError, double MaxRelativeError, double MeanAbsError, double GreedyAgreement,
    double FreeRunningCommonPrefix, int Tokens);

/// <summary>Compares the integer 4-bit decode path with the exact one.</summary>
public static class DecodeAccuracy
{
    /// <summary>Teacher-forced logit comparison and free-running greedy agreement over <paramref name="prompts"/>, <paramref name="tokens"/> new tokens each.</summary>
    /// <exception cref="ArgumentException">The model has no 4-bit projection (nothing to compare), or a prompt is empty.</exception>
    public static DecodeAccuracyReport Compare(LlamaForCausalLM model, IReadOnlyList<int[]> prompts, int tokens, int threads = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(prompts);
        if (!model.Model.Layers.Any(l => Enumerable.Range(0, Projections.Count).Any(p => Projections.Of(l, p).Weight.DType == TensorDType.Q4)))
        {
            throw new ArgumentException("the model has no 4-bit projection: quantize it (QuantizeLinears or `peft quantize`) to compare the integer decode path.", nameof(model));
        }

        int maxLength = prompts.Max(p => p.Length) + tokens + 1;
        var exactOptions = new EngineOptions { Threads = threads, MaxSequenceLength = Math.Min(maxLength, model.Config.MaxPositionEmbeddings), MaxRunningSequences = 1, MaxBatchTokens = Math.Max(1, maxLength) };
        var exact = new BatchForward(model, exactOptions.MaxBatchTokens, 1, exactOptions.MaxSequenceLength, exactOptions);
        var integerOptions = exactOptions with { IntegerDecode = true };
        var integer = new BatchForward(model, integerOptions.MaxBatchTokens, 1, integerOptions.MaxSequenceLength, integerOptions);
        var c = model.Config;
        var pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, 16, 2 * ((exactOptions.MaxSequenceLength / 16) + 2));
        var table = AdapterTable.Empty(c.NumHiddenLayers);
        int vocab = c.VocabSize, steps = 0, agree = 0;
        double maxAbs = 0, maxRel = 0, sumAbs = 0, prefixSum = 0;
        foreach (var prompt in prompts)
        {
            if (prompt.Length == 0)
            {
                throw new ArgumentException("a prompt is empty.", nameof(prompts));
            }

            var (exactTokens, integerTokens) = (Greedy(exact, pool, table, prompt, tokens, vocab), Greedy(integer, pool, table, prompt, tokens, vocab));
            int prefix = 0;
            while (prefix < tokens && exactTokens[prefix] == integerTokens[prefix])
            {
                prefix++;
            }

            prefixSum += prefix;

            // Teacher forcing along the exact path's tokens: both see the same context at every step.
            using var a = pool.CreateSequence();
            using var b = pool.CreateSequence();
            var batch = new StepBatch(Math.Max(1, maxLength), 1);
            for (int step = 0; step < tokens; step++)
            {
                var feed = step == 0 ? prompt : [exactTokens[step - 1]];
                var za = Step(exact, batch, table, a, feed, vocab);
                var zb = Step(integer, batch, table, b, feed, vocab);
                double rowMax = 0, rowErr = 0;
                for (int j = 0; j < vocab; j++)
                {
                    double d = Math.Abs(za[j] - zb[j]);
                    rowErr = Math.Max(rowErr, d);
                    rowMax = Math.Max(rowMax, Math.Abs(za[j]));
                    sumAbs += d;
                }

                maxAbs = Math.Max(maxAbs, rowErr);
                maxRel = Math.Max(maxRel, rowMax == 0 ? 0 : rowErr / rowMax);
                agree += LlamaForCausalLM.ArgMax(za) == LlamaForCausalLM.ArgMax(zb) ? 1 : 0;
                steps++;
            }
        }

        return new DecodeAccuracyReport(steps, maxAbs, maxRel, sumAbs / ((double)steps * vocab), (double)agree / steps, prefixSum / prompts.Count, tokens);
    }

    private static int[] Greedy(BatchForward forward, KvBlockPool pool, AdapterTable table, int[] prompt, int tokens, int vocab)
    {
        using var sequence = pool.CreateSequence();
        var batch = new StepBatch(prompt.Length + 1, 1);
        var output = new int[tokens];
        var feed = prompt;
        for (int i = 0; i < tokens; i++)
        {
            output[i] = LlamaForCausalLM.ArgMax(Step(forward, batch, table, sequence, feed, vocab));
            feed = [output[i]];
        }

        return output;
    }

    private static float[] Step(BatchForward forward, StepBatch batch, AdapterTable table, PagedSequence sequence, int[] feed, int vocab)
    {
        int start = sequence.Length;
        foreach (int token in feed)
        {
            sequence.Append(token);
        }

        batch.Clear();
        batch.Add(sequence, feed, start, -1, wantsLogits: true);
        return forward.Run(batch, table)[..vocab].ToArray();
    }
}
