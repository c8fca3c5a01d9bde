using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>X-LoRA's forward and training: expert mixing, the gradient into the classifier, frozen experts, a falling loss.</summary>
public class XLoraTests
{
    internal static readonly int[] Tokens = [1, 7, 3, 39, 12, 5, 22, 9];

    /// <summary>The tiny model (one decoder layer) as every X-LoRA test's base.</summary>
    internal static LlamaForCausalLM Base() => Testing.TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1 }, scale: 5f);

    /// <summary>Two randomized LoRA experts saved under <paramref name="folder"/>/e0 (q_proj, v_proj) and /e1 (v_proj, down_proj).</summary>
    internal static string[] SaveExperts(string folder)
    {
        string[] targets = ["q_proj,v_proj", "v_proj,down_proj"];
        var folders = new string[targets.Length];
        for (int j = 0; j < targets.Length; j++)
        {
            var peft = new PeftModel(Base(), Testing.TinyLlama.Lora(targets[j], r: 4, alpha: 8));
            Testing.TinyLlama.Randomize(peft.Model, "default", 100 + (10 * j));
            folders[j] = Path.Combine(folder, $"e{j}");
            peft.SaveAdapter(folders[j]);
        }

        return folders;
    }

    /// <summary>Fills the classifier's parameters with U(−range, range) so the scalings differ per token.</summary>
    internal static void RandomizeClassifier(XLoraModel xlora, int seed, float range = 0.3f)
    {
        foreach (var p in xlora.Classifier.Parameters)
        {
            TestUtil.Random(p.Data.Length, seed++, range).CopyTo(p.Data, 0);
        }
    }

    [Fact]
    public void LoraModulesAreCountedInModelOrderAndTheExpertsAreFrozen()
    {
        using var temp = new TempFolder();
        var model = Base();
        var xlora = XLoraModel.Attach(model, new XLoraConfig { LayerwiseScalings = true }, SaveExperts(temp.Path), seed: 3);

        Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj"], xlora.LoraModules);
        Assert.Equal(2 * 3, xlora.Classifier.Outputs);
        Assert.Equal(64, xlora.Config.HiddenSize);
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Name).ToList();
        Assert.Equal(["internal_xlora_classifier.layers.0.weight", "internal_xlora_classifier.layers.0.bias"], trainable);
        Assert.Contains(model.NamedParameters(), p => p.Name == "model.layers.0.mlp.down_proj.lora_A.1.weight" && !p.Parameter.Trainable);
        Assert.False(xlora.CanMerge);
        Assert.Contains("per token", Assert.Throws<NotSupportedException>(xlora.Merge).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AOneHotGateEqualsTheExpertAloneAndTheScalingPassIsTheBase()
    {
        using var temp = new TempFolder();
        var folders = SaveExperts(temp.Path);
        var model = Base();
        using var scope = Tape.NoGrad();
        var baseLogits = model.Forward(Tokens).Data;

        // top-1 with a softmax over the kept entry gives exactly 1 for the expert of the larger bias, 0 for the other.
        var xlora = XLoraModel.Attach(model, new XLoraConfig { TopKLora = 1, EnableSoftmaxTopK = true }, folders);
        var w = xlora.Classifier.Parameters.ToList();
        Array.Clear(w[0].Data);
        w[1].Data[0] = -1f;
        w[1].Data[1] = 2f;
        var mixed = model.Forward(Tokens).Data;
        Assert.All(xlora.LatestScalings!.Data.Chunk(2), row => Assert.Equal([0f, 1f], row));

        var alone = new PeftModel(Base());
        alone.LoadAdapter(folders[1]);
        TestUtil.AssertClose(mixed, TestUtil.ToDouble(((LlamaForCausalLM)alone.Model).Forward(Tokens).Data), 1e-4, 1e-4, "expert 1 alone");

        // global_scaling_weight 0 switches every expert branch off: the base model again.
        xlora.Detach();
        Assert.Null(model.XLora);
        TestUtil.AssertClose(model.Forward(Tokens).Data, TestUtil.ToDouble(baseLogits), 1e-6, 1e-6, "detached");
        var off = XLoraModel.Attach(model, new XLoraConfig { GlobalScalingWeight = 0 }, folders);
        RandomizeClassifier(off, 5);
        TestUtil.AssertClose(model.Forward(Tokens).Data, TestUtil.ToDouble(baseLogits), 1e-5, 1e-5, "g = 0");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheClassifierGradientMatchesFiniteDifferencesThroughTheModel(bool layerwise)
    {
        using var temp = new TempFolder();
        var model = Base();
        var xlora = XLoraModel.Attach(model, new XLoraConfig { LayerwiseScalings = layerwise, SoftmaxTemperature = 0.8 }, SaveExperts(temp.Path), seed: 1);
        RandomizeClassifier(xlora, 11, 0.5f);
        var (w, b) = (xlora.Classifier.Parameters.First(), xlora.Classifier.Parameters.Last());
        int[] tokens = [3, 17, 8, 30];
        AutogradTests.Check(() => model.Forward(tokens), ("classifier weight", (Parameter)w), ("classifier bias", (Parameter)b));

        // The experts and the base get no gradient.
        Tape.Backward(model.Loss(tokens, [17, 8, 30, 2]));
        Assert.All(model.NamedParameters().Where(p => !p.Name.StartsWith("internal_xlora", StringComparison.Ordinal)), p => Assert.Null(p.Parameter.Grad));
    }

    [Fact]
    public void ADeepClassifierTrainsAndTheLossFalls()
    {
        using var temp = new TempFolder();
        var model = Base();
        var config = new XLoraConfig { XLoraDepth = 3, XLoraSize = 16, XLoraDropoutP = 0.1, TopKLora = 2, LayerwiseScalings = true };
        var xlora = XLoraModel.Attach(model, config, SaveExperts(temp.Path), seed: 2);
        Assert.Equal(["layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias", "layers.6.weight", "layers.6.bias"],
            xlora.Classifier.NamedParameters().Select(p => p.Name));
        int[] inputs = [1, 7, 3, 39, 12, 5], labels = [7, 3, 39, 12, 5, 2];
        model.Train();
        float first = 0, last = 0;
        for (int step = 0; step < 40; step++)
        {
            var loss = model.Loss(inputs, labels, 1, new ForwardContext((ulong)step));
            last = loss.Item();
            first = step == 0 ? last : first;
            Tape.Backward(loss);
            foreach (var p in xlora.Parameters)
            {
                var d = p.Data;
                for (int i = 0; i < d.Length; i++)
                {
                    d[i] -= 0.05f * p.Grad![i];
                }

                p.Grad = null;
            }
        }

        Assert.True(last < first * 0.95f, $"the loss went from {first} to {last}");
    }

    [Fact]
    public void BadAttachmentsAreRefused()
    {
        using var temp = new TempFolder();
        var folders = SaveExperts(temp.Path);
        var model = Base();
        var xlora = XLoraModel.Attach(model, new XLoraConfig(), folders);
        Assert.Contains("already has an X-LoRA", Assert.Throws<InvalidOperationException>(() => XLoraModel.Attach(model, new XLoraConfig(), folders)).Message, StringComparison.Ordinal);
        xlora.Detach();
        var withLora = new PeftModel(model, Testing.TinyLlama.Lora("q_proj"));
        Assert.Contains("bare base model", Assert.Throws<InvalidOperationException>(() => XLoraModel.Attach(model, new XLoraConfig(), folders)).Message, StringComparison.Ordinal);
        Assert.NotNull(withLora);

        var dora = new PeftModel(Base(), Testing.TinyLlama.Lora("q_proj") with { UseDora = true });
        string doraFolder = Path.Combine(temp.Path, "dora");
        dora.SaveAdapter(doraFolder);
        var fresh = Base();
        Assert.Contains("use_dora", Assert.Throws<InvalidDataException>(() => XLoraModel.Attach(fresh, new XLoraConfig(), [folders[0], doraFolder])).Message, StringComparison.Ordinal);
        Assert.DoesNotContain(fresh.NamedModules(), m => m.Module is ILoraLayer { AllAdapters.Count: > 0 });
        Assert.Throws<NotSupportedException>(() => XLoraModel.Attach(fresh, new XLoraConfig { UseTrainableAdapters = true }, folders));
    }
}
