using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Testing;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// MixLoRA attached to a whole tiny Llama: starts equal to the base, parameters visible to the Trainer and kept out of the base
/// checkpoint, the load-balancing loss in training, training lowers the loss, cached generation equals the full forward,
/// the attention LoRA runs (against a reference) until detached, detach, and the refusal to merge.
/// </summary>
public class MixLoraModelTests
{
    internal static readonly MixLoraConfig Config = new() { NumExperts = 4, TopK = 2, R = 4, LoraAlpha = 8, LoraDropout = 0, RouterAuxLossCoef = 0.01 };

    /// <summary>The tiny model with a MixLoRA adapter whose B factors and routers are random (every expert differs).</summary>
    internal static (LlamaForCausalLM Model, MixLoraAdapter Adapter) Randomized(MixLoraConfig? config = null, int seed = 3)
    {
        var model = TinyLlama.Model();
        var adapter = MixLoraAdapter.Attach(model, config ?? Config, seed);
        int i = 0;
        foreach (var (name, p) in model.NamedParameters().Where(p => p.Parameter.Trainable))
        {
            if (name.Contains("lora_B", StringComparison.Ordinal) || name.Contains("moe_gate", StringComparison.Ordinal))
            {
                TestUtil.Random(p.Data.Length, seed + (++i), name.Contains("moe_gate", StringComparison.Ordinal) ? 1f : 0.3f).CopyTo(p.Data, 0);
            }
        }

        return (model, adapter);
    }

    [Fact]
    public void AttachedAdapterStartsAsTheBaseAndIsListedButNotSavedWithTheBase()
    {
        var model = TinyLlama.Model();
        using var scope = Tape.NoGrad();
        var before = model.Forward(TinyLlama.Inputs).Data;
        var adapter = MixLoraAdapter.Attach(model, Config, seed: 1);
        TestUtil.AssertClose(model.Forward(TinyLlama.Inputs).Data, before, 1e-4, 1e-4, "logits with fresh MixLoRA");

        var names = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Name).ToList();
        Assert.Contains("model.layers.0.mlp.mixlora.moe_gate.weight", names);
        Assert.Contains("model.layers.1.mlp.mixlora.down_proj.experts.3.lora_B.weight", names);
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.mixlora.weight", names);
        Assert.Equal(names.Count, adapter.Parameters.Count());
        Assert.False(adapter.CanMerge);
        var e = Assert.Throws<NotSupportedException>(adapter.Merge);
        Assert.Contains("does not merge", e.Message, StringComparison.Ordinal);

        string folder = Path.Combine(Path.GetTempPath(), "mixlora-base-" + Guid.NewGuid().ToString("N"));
        try
        {
            model.Save(folder);
            using var file = SafeTensorsFile.Open(Directory.GetFiles(folder, "*.safetensors").Single());
            Assert.DoesNotContain(file.Names, n => n.Contains("mixlora", StringComparison.Ordinal) || n.Contains("lora_", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    [Fact]
    public void TrainingLossAddsTheLoadBalancingLossAndItAloneMovesAFreshRouter()
    {
        var model = TinyLlama.Model();
        var adapter = MixLoraAdapter.Attach(model, Config, seed: 2);
        double eval;
        using (Tape.NoGrad())
        {
            eval = model.Loss(TinyLlama.Inputs, TinyLlama.Labels).Item();
        }

        model.Train(true);
        var loss = model.Loss(TinyLlama.Inputs, TinyLlama.Labels);
        Assert.True(adapter.LastLoadBalancingLoss > 0);
        Assert.Equal(eval + adapter.LastLoadBalancingLoss, loss.Item(), 5);
        Tape.Backward(loss);

        // With B = 0 every expert is the base MLP, so the language-model loss cannot prefer one: the routers' gradient is the
        // load-balancing loss's (non-zero). Without the auxiliary loss it vanishes.
        var router = adapter.Blocks[0].Router;
        Assert.Contains(router.Grad!, g => Math.Abs(g) > 1e-7);
        model.ZeroGrad();
        Tape.Clear();

        var quiet = TinyLlama.Model();
        var quietAdapter = MixLoraAdapter.Attach(quiet, Config with { RouterAuxLossCoef = 0 }, seed: 2);
        quiet.Train(true);
        Tape.Backward(quiet.Loss(TinyLlama.Inputs, TinyLlama.Labels));
        Assert.All(quietAdapter.Blocks[0].Router.Grad ?? [], g => Assert.True(Math.Abs(g) < 1e-6, $"router gradient {g} without the auxiliary loss"));
        Assert.Equal(0, quietAdapter.LastLoadBalancingLoss);
        Tape.Clear();
    }

    [Fact]
    public void TrainerLowersTheLossAndJitterOnlyActsInTraining()
    {
        var model = TinyLlama.Model();
        MixLoraAdapter.Attach(model, Config with { JitterNoise = 0.05 }, seed: 4);
        double Eval()
        {
            using var scope = Tape.NoGrad();
            return model.Loss(TinyLlama.Inputs, TinyLlama.Labels).Item();
        }

        double before = Eval();
        Assert.Equal(before, Eval());
        var trainer = new Trainer(model, _ => (TinyLlama.Inputs, TinyLlama.Labels), 1, new TrainerOptions { Steps = 15, LearningRate = 1e-2 });
        trainer.Run();
        Assert.True(Eval() < before - 0.1, $"loss {before} -> {Eval()}");
    }

    [Fact]
    public void CachedGenerationEqualsTheFullForward()
    {
        var (model, _) = Randomized();
        int[] tokens = [1, 7, 3, 39, 12, 5, 8, 21];
        using var scope = Tape.NoGrad();
        var full = model.Forward(tokens).Data;
        int vocab = model.Config.VocabSize;
        using var cache = model.CreateCache(tokens.Length);
        var prefix = model.Forward(tokens[..3], 1, cache).Data;
        TestUtil.AssertClose(prefix, full.AsSpan(0, 3 * vocab).ToArray(), 1e-4, 1e-4, "prefix logits");
        for (int t = 3; t < tokens.Length; t++)
        {
            var step = model.Forward([tokens[t]], 1, cache).Data;
            TestUtil.AssertClose(step, full.AsSpan(t * vocab, vocab).ToArray(), 1e-4, 1e-4, $"cached step {t}");
        }

        // Greedy generation with the cache equals the argmax of full forwards, token by token.
        var generated = model.Generate([1, 7, 3], 5);
        var seq = new List<int> { 1, 7, 3 };
        for (int i = 0; i < 5; i++)
        {
            var logits = model.Forward([.. seq]).Data;
            seq.Add(LlamaForCausalLM.ArgMax(logits.AsSpan((seq.Count - 1) * vocab, vocab)));
        }

        Assert.Equal(seq.Skip(3), generated.TakeLast(5));
    }

    [Fact]
    public void TheAttentionLoraRunsInTheForwardUntilDetached()
    {
        var model = TinyLlama.Model();
        using var scope = Tape.NoGrad();
        var before = model.Forward(TinyLlama.Inputs).Data;
        var adapter = MixLoraAdapter.Attach(model, Config with { TargetModules = ["q_proj", "v_proj", "down_proj"] }, seed: 5);
        int seed = 10;
        foreach (var lora in adapter.AttentionAdapters)
        {
            TestUtil.Random(lora.B.Data.Length, ++seed, 0.3f).CopyTo(lora.B.Data, 0);
        }

        // q_proj of layer 0 against the reference y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ.
        var q = model.Model.Layers[0].SelfAttn.QProj;
        var qLora = adapter.AttentionAdapters[0];
        Assert.Contains(MixLoraAdapter.AttentionAdapterName, q.ActiveAdapters);
        int n = 3, inF = q.InFeatures, outF = q.OutFeatures, r = qLora.Rank;
        var x = TestUtil.Random(n * inF, 12, 1f);
        var expected = new float[n * outF];
        for (int i = 0; i < n; i++)
        {
            var ax = new double[r];
            for (int j = 0; j < r; j++)
            {
                for (int c = 0; c < inF; c++)
                {
                    ax[j] += qLora.A.Data[(j * inF) + c] * x[(i * inF) + c];
                }
            }

            for (int o = 0; o < outF; o++)
            {
                double y = 0;
                for (int c = 0; c < inF; c++)
                {
                    y += q.Weight.Data[(o * inF) + c] * x[(i * inF) + c];
                }

                for (int j = 0; j < r; j++)
                {
                    y += qLora.Scale * qLora.B.Data[(o * r) + j] * ax[j];
                }

                expected[(i * outF) + o] = (float)y;
            }
        }

        TestUtil.AssertClose(q.Forward(new Tensor(x, n, inF)).Data, expected, 1e-4, 1e-4, "q_proj with the attention LoRA");
        var moved = model.Forward(TinyLlama.Inputs).Data.Zip(before, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(moved > 1e-2f, $"the attention LoRA moves the logits by only {moved}");

        adapter.Detach();
        Assert.DoesNotContain(MixLoraAdapter.AttentionAdapterName, q.ActiveAdapters);
        TestUtil.AssertClose(model.Forward(TinyLlama.Inputs).Data, before, 1e-6, 1e-6, "after detach");
    }

    [Fact]
    public void DetachRestoresTheBaseAndAllowsAnotherAttach()
    {
        var model = TinyLlama.Model();
        using var scope = Tape.NoGrad();
        var before = model.Forward(TinyLlama.Inputs).Data;
        var (randomized, adapter) = Randomized();
        Assert.Throws<InvalidOperationException>(() => MixLoraAdapter.Attach(randomized, Config));
        adapter.Detach();
        TestUtil.AssertClose(randomized.Forward(TinyLlama.Inputs).Data, before, 1e-6, 1e-6, "after detach");
        Assert.DoesNotContain(randomized.NamedParameters(), p => p.Name.Contains("mixlora", StringComparison.Ordinal));
        MixLoraAdapter.Attach(randomized, Config);
    }
}
