// The demo task for bottleneck adapters: the demo's tiny base is pre-trained on the byte corpus (as
// `peft demo --fast` does), then a Houlsby bottleneck adapter (identity start) is trained on the
// sentiment task and must reach held-out accuracy >= the base's + 30 points. A fusion over two frozen
// adapters (the trained one and an untrained one) then trains and keeps the task.
using System.Diagnostics;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Text;
using PeftKernels.Training;
using Xunit;
using Xunit.Abstractions;

namespace PeftKernels.Tests;

public sealed class DemoBottleneckTests(ITestOutputHelper output)
{
    /// <summary>The settings the demo can use for --methods bottleneck.</summary>
    internal static readonly (int Steps, double LearningRate, int Batch) Settings = (80, 4e-3, 16);

    internal static LlamaForCausalLM PretrainedBase(int seed = 0) => DemoBase.Pretrained(seed);

    private static double Accuracy(LlamaForCausalLM model, List<DemoExample> examples) =>
        DemoEval.Accuracy(examples, DemoEval.Answers((t, b) => model.Forward(t, b), examples));

    private static void Train(LlamaForCausalLM model, int steps, double lr, int seed) =>
        new Trainer(model, rng => DemoTask.Sentiment.Batch(rng, Settings.Batch), Settings.Batch, new TrainerOptions
        {
            Steps = steps,
            LearningRate = lr,
            WarmupSteps = steps / 10,
            Seed = seed,
        }).Run();

    [Fact]
    public void BottleneckLearnsTheSentimentTaskAndAFusionOverFrozenAdaptersTrains()
    {
        var clock = Stopwatch.StartNew();
        var model = PretrainedBase();
        double pretrain = clock.Elapsed.TotalSeconds;
        var examples = DemoTask.Sentiment.Examples(48, 1000);
        double baseAccuracy = Accuracy(model, examples);

        var set = BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { InitWeights = "mam_adapter" }, seed: 1, name: "sentiment");
        Assert.Equal(baseAccuracy, Accuracy(model, examples));
        Train(model, Settings.Steps, Settings.LearningRate, seed: 7);
        double adapterAccuracy = Accuracy(model, examples);
        double train = clock.Elapsed.TotalSeconds - pretrain;
        output.WriteLine($"base {baseAccuracy:P0}, bottleneck {adapterAccuracy:P0} ({set.Parameters.Sum(p => p.Count)} params); pretrain {pretrain:F1} s, train {train:F1} s");
        Assert.True(adapterAccuracy >= baseAccuracy + 0.30, $"bottleneck accuracy {adapterAccuracy:P0} vs base {baseAccuracy:P0}");

        // Fuse(sentiment, other) over both adapters frozen: only the fusion layers train.
        foreach (var p in set.Parameters)
        {
            p.Trainable = false;
        }

        set.Add("other", BottleneckConfig.Houlsby(), seed: 2, trainable: false);
        var fuse = AdapterSetup.Fuse("sentiment", "other");
        set.AddFusion(fuse, seed: 3);
        set.ActiveSetup = fuse;
        Assert.All(model.NamedParameters().Where(p => p.Parameter.Trainable), p => Assert.Contains("adapter_fusion_layer", p.Name, StringComparison.Ordinal));
        Train(model, 20, 2e-3, seed: 8);
        double fusedAccuracy = Accuracy(model, examples);
        output.WriteLine($"fusion over frozen adapters: {fusedAccuracy:P0}; total {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(fusedAccuracy >= baseAccuracy + 0.30, $"fused accuracy {fusedAccuracy:P0} vs base {baseAccuracy:P0}");
    }
}
