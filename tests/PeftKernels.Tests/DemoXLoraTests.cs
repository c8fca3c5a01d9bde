// X-LoRA on the demo's sentiment task: the demo's tiny base is pre-trained as `peft demo --fast` does (it learns the words,
// never the task format), two LoRA experts are trained briefly (one on sentiment, one on topic) and saved as PEFT folders,
// then an X-LoRA classifier over them is trained on sentiment; its held-out accuracy must beat the base's by 30 points.
using System.Diagnostics;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using PeftKernels.Text;
using PeftKernels.Training;
using Xunit;
using Xunit.Abstractions;

namespace PeftKernels.Tests;

public sealed class DemoXLoraTests(ITestOutputHelper output)
{
    private const int Seed = 7;

    private static LlamaForCausalLM Pretrain() => DemoBase.Pretrained(Seed);

    private static void Train(LlamaForCausalLM model, DemoTask task, int steps, double lr, int seed) =>
        new Trainer(model, rng => task.Batch(rng, 16), 16, new TrainerOptions { Steps = steps, LearningRate = lr, WarmupSteps = steps / 10, Seed = seed }).Run();

    private static double Accuracy(LlamaForCausalLM model, List<DemoExample> examples) =>
        DemoEval.Accuracy(examples, DemoEval.Answers((t, b) => model.Forward(t, b, null, ForwardContext.Default), examples));

    [Fact]
    public void XLoraOverASentimentAndATopicExpertLearnsTheSentimentTask()
    {
        using var temp = new TempFolder();
        var clock = Stopwatch.StartNew();
        var model = Pretrain();
        string baseFolder = Path.Combine(temp.Path, "base");
        model.Save(baseFolder);
        var eval = DemoTask.Sentiment.Examples(48, Seed + 1000);
        double before = Accuracy(model, eval);
        output.WriteLine($"pretrain {clock.Elapsed.TotalSeconds:F1} s; base sentiment accuracy {before:P0}");

        // The experts: ordinary LoRA adapters, briefly trained, saved in PEFT layout.
        var experts = new List<string>();
        foreach (var (task, steps) in new[] { (DemoTask.Sentiment, 80), (DemoTask.Topic, 25) })
        {
            var lm = LlamaForCausalLM.Load(baseFolder);
            var peft = new PeftModel(lm, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed: Seed);
            Train(lm, task, steps, 1e-2, Seed + experts.Count);
            output.WriteLine($"expert {task.Name}: accuracy on sentiment {Accuracy(lm, eval):P0} ({clock.Elapsed.TotalSeconds:F1} s)");
            string dir = Path.Combine(temp.Path, task.Name);
            peft.SaveAdapter(dir);
            experts.Add(dir);
        }

        var xloraModel = LlamaForCausalLM.Load(baseFolder);
        var xlora = XLoraModel.Attach(xloraModel, new XLoraConfig(), experts, Seed);
        double untrained = Accuracy(xloraModel, eval);
        Train(xloraModel, DemoTask.Sentiment, 20, 1e-2, Seed);
        double after = Accuracy(xloraModel, eval);
        var scalings = xlora.LatestScalings!.Data;
        output.WriteLine($"X-LoRA: untrained classifier {untrained:P0}, trained {after:P0}; {xlora.Parameters.Sum(p => p.Count)} trainable parameters; "
            + $"last scalings row {scalings[^2]:F3}, {scalings[^1]:F3}; total {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(after >= before + 0.30, $"X-LoRA sentiment accuracy {after:P0} vs base {before:P0}");

        // The trained folder loads back to the same answers.
        string saved = Path.Combine(temp.Path, "xlora");
        xlora.Save(saved);
        var reloaded = LlamaForCausalLM.Load(baseFolder);
        XLoraModel.Load(reloaded, saved);
        Assert.Equal(after, Accuracy(reloaded, eval));
    }
}
