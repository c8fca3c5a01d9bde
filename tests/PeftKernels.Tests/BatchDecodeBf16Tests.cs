// A batched decode step (5 to 64 rows) at bf16 compute: on a machine with a native pair micro-kernel
// (AVX512-BF16 or AMX) its base products run the bf16 GEMM over the weights' kept bf16 panels instead of
// BatchGemv's fp32, so the logits move by bf16 rounding (within a bf16 tolerance of fp32, but not equal);
// without one (no library, no instructions, or the managed kernel forced) the step stays on BatchGemv and
// equals the fp32-compute step bit for bit. The prompts go in one or a few tokens per step (≤ 4 rows: the
// decode path, fp32 at either compute), so both forwards hold the same KV cache before the compared step.
using PeftKernels.Engine;
using PeftKernels.Kernels;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

public sealed class BatchDecodeBf16Tests
{
    private const int Sequences = 6;

    /// <summary>Vector256: the AVX512-BF16 kernel needs the Vector512 path, so on a machine without AMX this is the BatchGemv case.</summary>
    public static TheoryData<SimdPath> Paths() => [.. new[] { SimdPath.Auto, SimdPath.Vector256 }.Where(KernelOptions.IsSupported)];

    [Theory]
    [MemberData(nameof(Paths))]
    public void BatchedDecodeAtBf16ComputeReadsTheKeptPanelsWhenANativeKernelRuns(SimdPath path)
    {
        using var fx = new EngineFixture();
        var fp32 = Decode(fx, new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8, Path = path }, out var prefill32, out _);
        var bf16Options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8, Path = path, Compute = ComputePrecision.Bf16 };
        var bf16 = Decode(fx, bf16Options, out var prefill16, out long panelUses);
        Assert.Equal(prefill32, prefill16); // ≤ 4-row steps are fp32 at either compute: the same cache before the compared step

        var weight = fx.NewModel().Model.Layers[0].SelfAttn.QProj.Weight.AsWeight();
        if (GemmDriver.ReadsKeptBf16Panels(weight, weight.Rows, bf16Options.Kernel))
        {
            Assert.True(panelUses >= fx.Reference.Config.NumHiddenLayers * 4, $"the bf16 step read or packed only {panelUses} kept panels");
            float worst = 0f, scale = 1f;
            for (int j = 0; j < fp32.Length; j++)
            {
                worst = Math.Max(worst, Math.Abs(fp32[j] - bf16[j]));
                scale = Math.Max(scale, Math.Abs(fp32[j]));
            }

            Assert.True(worst > 0f, "the bf16-compute decode step gave the fp32 logits exactly: it did not run in bf16");
            Assert.True(worst <= 3e-2f * scale, $"bf16 decode logits differ from fp32 by {worst} (max |logit| {scale})");
        }
        else
        {
            Assert.Equal(fp32, bf16);
        }
    }

    /// <summary>Prefills <see cref="Sequences"/> prompts a few tokens a step, then runs one decode step of all of them; returns its logits.</summary>
    private static float[] Decode(EngineFixture fx, EngineOptions options, out float[] prefillLogits, out long panelUses)
    {
        using var engine = fx.Engine(options);
        var model = fx.NewModel();
        var c = model.Config;
        var forward = new BatchForward(model, 64, 8, 256, options);
        var pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, 4, 64);
        var (table, slot) = engine.TableAndSlot(null);
        var batch = new StepBatch(64, 8);
        var rng = new Random(5);
        var sequences = Enumerable.Range(0, Sequences).Select(_ => pool.CreateSequence()).ToArray();
        var prefill = new List<float>();
        for (int i = 0; i < Sequences; i++)
        {
            int[] prompt = [.. Enumerable.Range(0, 2 + i).Select(_ => rng.Next(c.VocabSize))];
            for (int at = 0; at < prompt.Length; at += 3)
            {
                int[] chunk = prompt[at..Math.Min(prompt.Length, at + 3)];
                foreach (int token in chunk)
                {
                    sequences[i].Append(token);
                }

                batch.Clear();
                batch.Add(sequences[i], chunk, at, slot, wantsLogits: true);
                prefill.AddRange(forward.Run(batch, table).ToArray());
            }
        }

        batch.Clear();
        for (int i = 0; i < Sequences; i++)
        {
            int token = ((5 * i) + 3) % c.VocabSize;
            int position = sequences[i].Length;
            sequences[i].Append(token);
            batch.Add(sequences[i], [token], position, slot, wantsLogits: true);
        }

        long before = WeightPanelCache.Hits + WeightPanelCache.Misses;
        var logits = forward.Run(batch, table).ToArray();
        panelUses = WeightPanelCache.Hits + WeightPanelCache.Misses - before;
        prefillLogits = [.. prefill];
        return logits;
    }
}
