// The demo task for MixLoRA: the demo's tiny base (pre-trained as `peft demo --fast` does: Tiny(256),
// byte tokens, 150 steps) learns the sentiment task through a MixLoRA adapter (4 experts, top-2,
// r 8, every linear layer) and must beat the base's held-out accuracy by at least 30 points.
using System.Diagnostics;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Text;
using PeftKernels.Training;
using Xunit;
using Xunit.Abstractions;

namespace PeftKernels.Tests;

public class DemoMixLoraTests(ITestOutputHelper output)
{
    /// <summary>The MixLoRA settings of the demo (the lead's `peft demo --methods` row).</summary>
    internal static readonly MixLoraConfig DemoConfig = new() { NumExperts = 4, TopK = 2, R = 8, LoraAlpha = 16, LoraDropout = 0, RouterAuxLossCoef = 0.01 };

    internal const int DemoSteps = 80;

    internal const double DemoLearningRate = 4e-3;

    [Fact]
    public void MixLoraLearnsTheSentimentTaskBeyondTheBase()
    {
        var clock = Stopwatch.StartNew();
        var model = PretrainedDemoBase(seed: 0);
        double pretrain = clock.Elapsed.TotalSeconds;
        var eval = DemoTask.Sentiment.Examples(48, 1000);
        double before = DemoEval.Accuracy(eval, DemoEval.Answers((t, b) => model.Forward(t, b), eval));

        var adapter = MixLoraAdapter.Attach(model, DemoConfig, seed: 0);
        clock.Restart();
        var trainer = new Trainer(model, rng => DemoTask.Sentiment.Batch(rng, 16), 16,
            new TrainerOptions { Steps = DemoSteps, LearningRate = DemoLearningRate, WarmupSteps = DemoSteps / 10, Seed = 9 });
        trainer.Run();
        double train = clock.Elapsed.TotalSeconds;
        double after = DemoEval.Accuracy(eval, DemoEval.Answers((t, b) => model.Forward(t, b), eval));
        long trainable = adapter.Parameters.Sum(p => p.Count);
        output.WriteLine($"MixLoRA sentiment: base {before:P0} -> {after:P0}; {trainable:N0} trainable parameters; pretrain {pretrain:F1} s, train {train:F1} s; final loss {trainer.LastFiniteLoss:F3}");
        Assert.True(after >= before + 0.30, $"MixLoRA accuracy {after:P0} is not 30 points above the base's {before:P0}");
    }

    /// <summary>The demo's fast base: Tiny(256) pre-trained on the demo corpus as `peft demo --fast` does, then frozen.</summary>
    internal static LlamaForCausalLM PretrainedDemoBase(int seed)
    {
        var dataset = new TextDataset(new ByteTokenizer().Encode(DemoTask.Corpus(1500, seed)));
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(256), seed);
        foreach (var (_, p) in model.NamedParameters())
        {
            p.Trainable = true;
        }

        new Trainer(model, rng => dataset.Batch(16, 64, rng), 16, new TrainerOptions
        {
            Steps = 150,
            LearningRate = 3e-3,
            WarmupSteps = 15,
            MinLearningRateRatio = 0.1,
            WeightDecay = 0.01,
            Seed = seed,
        }).Run();
        model.Freeze();
        return model;
    }
}
