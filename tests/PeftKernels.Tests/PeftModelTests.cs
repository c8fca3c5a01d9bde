using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The PeftModel API on a tiny Llama: several adapters, activation, disabling, per-row batches, counts, LoRA-FA, LoRA+, biases.</summary>
public class PeftModelTests
{
    private static readonly int[] Tokens = [1, 5, 9, 2, 39, 0, 7, 7];

    internal static LlamaConfig Qwen2Like => LlamaConfig.Tiny(40) with { ModelType = "qwen2", AttentionBias = true, HeadDim = 16 };

    internal static LoraConfig Config(string targets, int r = 4, double alpha = 8) => Testing.TinyLlama.Lora(targets, r, alpha);

    /// <summary>Random B (and lora_B bias, and embedding A) so every adapter changes the output.</summary>
    internal static void Randomize(Module model, string adapter, int seed) => Testing.TinyLlama.Randomize(model, adapter, seed);

    private static float[] Logits(LlamaForCausalLM model, int[]? tokens = null)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(tokens ?? Tokens).Data;
    }

    [Fact]
    public void TrainableParametersArePrintedAsPeftPrintsThem()
    {
        // Python: f"{100 * 1234 / 5678:.4f}" == "21.7330" (100·1234/5678 = 21.73300…).
        Assert.Equal("trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330", new TrainableParameterCount(1234, 5678).ToString());
        var model = LlamaModelTests.TinyModel();
        long baseCount = model.NamedParameters().Sum(p => p.Parameter.Count);
        var peft = new PeftModel(model, Config("q_proj,v_proj"));

        // Per layer: q A [4, 64] + B [64, 4] = 512, v A [4, 64] + B [32, 4] = 384; two layers.
        Assert.Equal(new TrainableParameterCount(1792, baseCount + 1792), peft.TrainableParameters());
        peft.FreezeLoraA();
        Assert.Equal(768, peft.TrainableParameters().Trainable);
        peft.AddAdapter("head", Config("q_proj") with { ModulesToSave = ["lm_head"] });

        // modules_to_save: a trainable copy of lm_head [40, 64]; the original counts too, as in PEFT.
        var counts = peft.TrainableParameters();
        Assert.Equal((768 + 1024 + 2560L, baseCount + 1792 + 1024 + 2560), (counts.Trainable, counts.Total));
    }

    [Fact]
    public void SeveralActiveAdaptersSumTheirBranchesAsTheReferenceDoes()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, Config("q_proj,down_proj", r: 3, alpha: 5) with { LoraBias = true }, "a");
        peft.AddAdapter("b", Config("all-linear", r: 2) with { UseRsLora = true }, seed: 1);
        peft.AddAdapter("e", Config("embed_tokens", r: 2));
        foreach (var (name, seed) in new[] { ("a", 10), ("b", 20), ("e", 30) })
        {
            Randomize(model, name, seed);
        }

        peft.SetAdapter("a", "b", "e");
        var expected = LlamaReference.Logits(model, Tokens, ["a", "b", "e"]);

        // As LlamaModelTests: fp32 through 2 layers of short dots, 1e-4 of the logit range.
        TestUtil.AssertClose(Logits(model), expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "a + b + e logits");
        peft.SetAdapter("b");
        var onlyB = LlamaReference.Logits(model, Tokens, ["b"]);
        TestUtil.AssertClose(Logits(model), onlyB, 1e-4 * onlyB.Max(Math.Abs), 1e-4, "b logits");
    }

    [Fact]
    public void AdaptersAreActivatedDisabledAndDeletedByName()
    {
        var model = LlamaModelTests.TinyModel();
        var plain = Logits(model);
        var peft = new PeftModel(model, Config("q_proj,v_proj"), "a");
        Randomize(model, "a", 1);
        var withA = Logits(model);
        peft.AddAdapter("b", Config("all-linear", r: 2));
        Randomize(model, "b", 2);
        Assert.Equal(new[] { "a" }, peft.ActiveAdapters);
        Assert.Equal(withA, Logits(model));
        peft.SetAdapter("b");
        var withB = Logits(model);
        Assert.NotEqual(withA, withB);
        using (peft.DisableAdapter())
        {
            Assert.True(peft.AdaptersDisabled);
            Assert.Equal(plain, Logits(model));
        }

        Assert.Equal(withB, Logits(model));
        peft.DeleteAdapter("b");
        Assert.Equal(new[] { "a" }, peft.ActiveAdapters);
        Assert.Equal(new[] { "a" }, peft.Adapters.Keys);
        Assert.Equal(withA, Logits(model));
        Assert.Empty(Lora.Adapters(model, "b"));

        Assert.Contains("no adapter named 'nope'; the model has [a]", Assert.Throws<ArgumentException>(() => peft.SetAdapter("nope")).Message);
        Assert.Contains("already has an adapter named 'a'", Assert.Throws<ArgumentException>(() => peft.AddAdapter("a", Config("q_proj"))).Message);
        Assert.Contains("no module matches target_modules [nothing]", Assert.Throws<ArgumentException>(() => peft.AddAdapter("c", Config("nothing"))).Message);
        Assert.Contains("use_dora is supported on Linear layers only; 'model.embed_tokens' is an Embedding",
            Assert.Throws<ArgumentException>(() => peft.AddAdapter("d", Config("embed_tokens,q_proj") with { UseDora = true })).Message);
        Assert.DoesNotContain("d", peft.Adapters.Keys);
        Assert.Empty(Lora.Adapters(model, "c"));
    }

    [Fact]
    public void MixedBatchEqualsEachSequenceRunAlone()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, Config("all-linear"), "a");
        peft.AddAdapter("b", Config("q_proj,embed_tokens,down_proj", r: 2), seed: 3);
        Randomize(model, "a", 4);
        Randomize(model, "b", 5);
        string[] names = ["b", ForwardContext.BaseAdapterName, "a", "b"];
        int[] tokens = [.. Enumerable.Range(0, names.Length * Tokens.Length).Select(i => (i * 7) % 40)];
        float[] mixed;
        using (Tape.NoGrad())
        {
            mixed = peft.Forward(tokens, names.Length, names).Data;
        }

        int rowFloats = Tokens.Length * 40;
        for (int s = 0; s < names.Length; s++)
        {
            var sequence = tokens[(s * Tokens.Length)..((s + 1) * Tokens.Length)];
            float[] alone;
            if (names[s] == ForwardContext.BaseAdapterName)
            {
                using var off = peft.DisableAdapter();
                alone = Logits(model, sequence);
            }
            else
            {
                peft.SetAdapter(names[s]);
                alone = Logits(model, sequence);
            }

            // The branches of a mixed batch are separate GEMMs instead of the fused kernel: fp32 reassociation only.
            double range = alone.Max(Math.Abs);
            TestUtil.AssertClose(mixed.AsSpan(s * rowFloats, rowFloats), alone, 1e-5 * range, 1e-5, $"sequence {s} ({names[s]})");
        }

        Assert.Contains("3 adapter names for a batch of 4", Assert.Throws<ArgumentException>(() => peft.Forward(tokens, 4, ["a", "b", "a"])).Message);
        Assert.Contains("no adapter named 'c'", Assert.Throws<ArgumentException>(() => peft.Forward(tokens, 4, ["a", "b", "a", "c"])).Message);
        peft.AddAdapter("head", Config("v_proj") with { ModulesToSave = ["lm_head"] });
        Assert.Throws<NotSupportedException>(() => peft.Forward(tokens, 4, ["a", "head", "a", "a"]));
    }

    [Fact]
    public void LoraPlusStepsBWithRatioTimesTheLearningRateOfA()
    {
        var model = LlamaModelTests.TinyModel();
        new PeftModel(model, Config("q_proj", r: 2));
        Randomize(model, "default", 6);
        var adapters = Lora.Adapters(model).Select(e => e.Adapter).ToList();
        var before = adapters.Select(a => (A: (float[])a.A.Data.Clone(), B: (float[])a.B.Data.Clone())).ToList();
        var rng = new Random(1);
        int[] inputs = [.. Enumerable.Range(0, 16).Select(_ => rng.Next(40))];
        var trainer = new Trainer(model, _ => (inputs, [.. inputs.Skip(1).Append(0)]), 2,
            new TrainerOptions { Steps = 1, LearningRate = 1e-3, LoraPlusRatio = 16, MaxGradNorm = 0 });
        Assert.All(trainer.Optimizer.State, s => Assert.Equal(adapters.Any(a => ReferenceEquals(a.B, s.Parameter)) ? 16 : 1, s.Group.LearningRateMultiplier));
        trainer.Run();

        // AdamW's first step moves each element by lr·g/(|g| + ε) ≈ ±lr (decay 0), so the largest
        // move of each matrix is its group's rate to within ε/|g|.
        double maxA = 0, maxB = 0;
        for (int i = 0; i < adapters.Count; i++)
        {
            maxA = Math.Max(maxA, adapters[i].A.Data.Zip(before[i].A, (x, y) => Math.Abs(x - (double)y)).Max());
            maxB = Math.Max(maxB, adapters[i].B.Data.Zip(before[i].B, (x, y) => Math.Abs(x - (double)y)).Max());
        }

        Assert.InRange(maxA / 1e-3, 0.99, 1.001);
        Assert.InRange(maxB / 16e-3, 0.99, 1.001);
    }

    [Fact]
    public void LoraFaTrainsOnlyB()
    {
        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, Config("q_proj,v_proj", r: 2));
        peft.FreezeLoraA();
        var adapters = Lora.Adapters(model).Select(e => e.Adapter).ToList();
        var aBefore = adapters.Select(a => (float[])a.A.Data.Clone()).ToList();
        var rng = new Random(2);
        int[] inputs = [.. Enumerable.Range(0, 16).Select(_ => rng.Next(40))];
        new Trainer(model, _ => (inputs, [.. inputs.Skip(1).Append(0)]), 2, new TrainerOptions { Steps = 2, LearningRate = 1e-2 }).Run();
        for (int i = 0; i < adapters.Count; i++)
        {
            Assert.Equal(aBefore[i], adapters[i].A.Data);
            Assert.Null(adapters[i].A.Grad);
            Assert.Contains(adapters[i].B.Data, v => v != 0f);
        }
    }

    [Theory]
    [InlineData("all", new[] { "q_proj", "k_proj", "v_proj" })]
    [InlineData("lora_only", new[] { "q_proj" })]
    public void BiasOptionsTrainBaseBiasesAndUnloadRestoresThem(string bias, string[] trained)
    {
        var model = LlamaForCausalLM.Create(Qwen2Like, 3);
        var biases = model.NamedParameters().Where(p => p.Name.EndsWith(".bias", StringComparison.Ordinal)).ToList();
        var original = biases.Select(b => (float[])b.Parameter.Data.Clone()).ToList();
        var plain = Logits(model);
        var peft = new PeftModel(model, Config("q_proj,o_proj") with { Bias = bias });
        foreach (var (name, p) in biases)
        {
            Assert.Equal(trained.Any(t => name.EndsWith($"{t}.bias", StringComparison.Ordinal)), p.Trainable);
            if (p.Trainable)
            {
                p.Data[0] += 1f;
            }
        }

        Assert.NotEqual(plain, Logits(model));
        peft.Unload();
        Assert.Equal(original, biases.Select(b => b.Parameter.Data));
        Assert.Equal(plain, Logits(model));
        Assert.All(model.NamedParameters(), p => Assert.False(p.Parameter.Trainable));
    }
}
