using PeftKernels.Autograd;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Bottleneck adapters on the tiny Llama: each variant's site equation against a double computation, the identity start, gradients
/// through the whole model by finite differences, training touching only the adapter, cached decoding equal to the full forward,
/// and the merge refusal.
/// </summary>
public class BottleneckAdapterTests
{
    internal static readonly ForwardContext Context = ForwardContext.Default;

    /// <summary>A(z) in double from the adapter's parameters: s·(W_up·f(W_down·z + b_down) + b_up).</summary>
    internal static double[] Reference(BottleneckLayer layer, float[] z, int rows)
    {
        int h = layer.UpWeight.Shape[0], m = layer.DownWeight.Shape[0];
        var hidden = new double[rows * m];
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < m; j++)
            {
                double s = layer.DownBias.Data[j];
                for (int c = 0; c < h; c++)
                {
                    s += (double)z[(r * h) + c] * layer.DownWeight.Data[(j * h) + c];
                }

                hidden[(r * m) + j] = s;
            }
        }

        string kind = layer.Config.NonLinearity == "swish" ? "silu" : layer.Config.NonLinearity;
        hidden = ActivationReference.Forward(kind, hidden);
        var output = new double[rows * h];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < h; c++)
            {
                double s = layer.UpBias.Data[c];
                for (int j = 0; j < m; j++)
                {
                    s += hidden[(r * m) + j] * layer.UpWeight.Data[(c * m) + j];
                }

                double scale = layer.Config.ScalingKind switch
                {
                    BottleneckScalingKind.Learned => layer.Scale!.Data[0],
                    BottleneckScalingKind.Channel => layer.Scale!.Data[c],
                    _ => layer.Config.Scaling,
                };
                output[(r * h) + c] = scale * s;
            }
        }

        return output;
    }

    internal static void Randomize(BottleneckAdapters set, int seed)
    {
        int i = 0;
        foreach (var p in set.Parameters)
        {
            var values = TestUtil.Random(p.Data.Length, seed + i++, 0.3f);
            for (int j = 0; j < values.Length; j++)
            {
                p.Data[j] = p.Shape.Length == 1 && p.Data[j] == 1f ? 1f + values[j] : values[j];
            }
        }
    }

    public static TheoryData<string, BottleneckScalingKind> Variants => new()
    {
        { "houlsby", BottleneckScalingKind.Constant },
        { "pfeiffer", BottleneckScalingKind.Learned },
        { "parallel", BottleneckScalingKind.Channel },
        { "parallel", BottleneckScalingKind.Constant },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void EachSiteFollowsItsVariantsEquation(string preset, BottleneckScalingKind scaling)
    {
        var model = TinyLlama.Model();
        var config = BottleneckConfig.Preset(preset) with { ScalingKind = scaling };
        var set = BottleneckAdapters.Attach(model, config, seed: 3);
        Randomize(set, 10);
        int rows = 5, h = model.Config.HiddenSize;
        foreach (var site in set.Sites.Take(2))
        {
            var x = new Tensor(TestUtil.Random(rows * h, 20), rows, h);
            var a = new Tensor(TestUtil.Random(rows * h, 21), rows, h);
            var y = site.Apply(x, a, 1, Context);
            var adapter = site.Adapter("bottleneck");
            Assert.Equal(config.HasSite(0, site.IsAttention), adapter != null);
            var expected = new double[rows * h];
            if (adapter != null)
            {
                // Houlsby: z = the sublayer output; Pfeiffer: z = output + residual; parallel: z = the sublayer input.
                var z = config.IsParallel ? x.Data : config.OriginalLnBefore ? [.. x.Data.Select((v, i) => v + a.Data[i])] : a.Data;
                expected = Reference(adapter, z, rows);
            }

            for (int i = 0; i < expected.Length; i++)
            {
                expected[i] += (double)x.Data[i] + a.Data[i];
            }

            TestUtil.AssertClose(y.Data, expected, 1e-4, 1e-4, $"{preset} site {(site.IsAttention ? "attention" : "output")}");
        }
    }

    [Theory]
    [InlineData("houlsby")]
    [InlineData("pfeiffer")]
    [InlineData("parallel")]
    public void TheIdentityStartComputesAsTheBase(string preset)
    {
        var model = TinyLlama.Model();
        using var scope = Tape.NoGrad();
        var baseLogits = model.Forward(TinyLlama.Inputs).Data;
        var set = BottleneckAdapters.Attach(model, BottleneckConfig.Preset(preset) with { InitWeights = "mam_adapter" }, seed: 1);
        Assert.Equal(baseLogits, model.Forward(TinyLlama.Inputs).Data);
        set.ActiveSetup = null;
        Assert.Equal(baseLogits, model.Forward(TinyLlama.Inputs).Data);
        set.Detach();
        Assert.Null(model.Model.Layers[0].OutputSite);
    }

    [Theory]
    [InlineData(BottleneckScalingKind.Learned)]
    [InlineData(BottleneckScalingKind.Channel)]
    public void AdapterGradientsThroughTheModelByFiniteDifferences(BottleneckScalingKind scaling)
    {
        var model = TinyLlama.Model(scale: 3f);
        var set = BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { ScalingKind = scaling, ReductionFactor = 32 }, seed: 2);
        Randomize(set, 30);
        var site = set.Sites[3].Adapter("bottleneck")!;
        var attention = set.Sites[0].Adapter("bottleneck")!;
        AutogradTests.Check(() => model.Loss(TinyLlama.Inputs, TinyLlama.Labels), ("output down bias", site.DownBias), ("output scaling", site.Scale!),
            ("attention up weight", attention.UpWeight), ("attention down weight", attention.DownWeight));
    }

    [Fact]
    public void AttachFreezesTheBaseAndTheCheckpointLeavesTheAdapterOut()
    {
        var model = TinyLlama.Model();
        var set = BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby());
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Name).ToList();
        Assert.Equal(set.Parameters.Count(), trainable.Count);
        Assert.Contains("model.layers.1.attention_adapters.adapters.bottleneck.adapter_down.0.weight", trainable);
        Assert.Contains("model.layers.0.output_adapters.adapters.bottleneck.adapter_up.bias", trainable);
        using var folder = new TempFolder();
        model.Save(folder.Path);
        using var file = IO.SafeTensorsFile.Open(folder.File("model.safetensors"));
        Assert.DoesNotContain(file.Names, n => n.Contains("adapters", StringComparison.Ordinal));
        Assert.NotEmpty(file.Names);
    }

    [Fact]
    public void CachedDecodingEqualsTheFullForward()
    {
        var model = TinyLlama.Model();
        var set = BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { ReductionFactor = 8 }, seed: 4);
        Randomize(set, 40);
        using var scope = Tape.NoGrad();
        var full = model.Forward(TinyLlama.Inputs).Data;
        using var cache = model.CreateCache(TinyLlama.Inputs.Length);
        var first = model.Forward(TinyLlama.Inputs[..4], 1, cache).Data;
        TestUtil.AssertClose(first, full.AsSpan(0, first.Length).ToArray(), 1e-4, 1e-4, "prefill");
        int vocab = model.Config.VocabSize;
        for (int t = 4; t < TinyLlama.Inputs.Length; t++)
        {
            var step = model.Forward([TinyLlama.Inputs[t]], 1, cache).Data;
            TestUtil.AssertClose(step, full.AsSpan(t * vocab, vocab).ToArray(), 1e-4, 1e-4, $"token {t}");
        }

        var generated = model.Generate([1, 7, 3], 5);
        var greedy = new List<int> { 1, 7, 3 };
        for (int i = 0; i < 5; i++)
        {
            var logits = model.Forward([.. greedy]).Data;
            greedy.Add(LlamaForCausalLM.ArgMax(logits.AsSpan((greedy.Count - 1) * vocab, vocab)));
        }

        Assert.Equal(greedy.Skip(3), generated);
    }

    [Fact]
    public void BottleneckAdaptersRefuseToMerge()
    {
        var set = BottleneckAdapters.Attach(TinyLlama.Model(), BottleneckConfig.Pfeiffer());
        Assert.False(set.CanMerge);
        Assert.Equal("bottleneck", set.Method);
        Assert.Contains("cannot be merged", Assert.Throws<NotSupportedException>(set.Merge).Message);
    }

    [Fact]
    public void BadConfigsAreRefusedByName()
    {
        var model = TinyLlama.Model();
        Assert.Contains("non_linearity", Assert.Throws<ArgumentException>(() => BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { NonLinearity = "elu" })).Message);
        Assert.Contains("reduction_factor", Assert.Throws<ArgumentException>(() => BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { ReductionFactor = 0 }, name: "b")).Message);
        Assert.Contains("init_weights", Assert.Throws<ArgumentException>(() => BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { InitWeights = "lora" }, name: "c")).Message);
        Assert.Throws<ArgumentException>(() => BottleneckConfig.Preset("adapter"));
    }
}
