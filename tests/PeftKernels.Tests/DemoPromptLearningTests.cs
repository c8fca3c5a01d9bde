// The demo's sentiment task learned by prompt tuning, P-tuning and prefix tuning over the demo's tiny pre-trained base
// (the `peft demo --fast` base: Tiny(256), 150 steps on the byte corpus): each must reach held-out accuracy of at least
// the base's + 30 points. The settings here are the ones `peft demo --methods` uses (PromptLearningDemo).
using System.Diagnostics;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;
using PeftKernels.Training;
using Xunit;
using Xunit.Abstractions;

namespace PeftKernels.Tests;

/// <summary>The pre-trained demo base, built once for the class (as DemoRunner.Pretrain does with --fast).</summary>
public sealed class DemoBaseFixture
{
    public DemoBaseFixture()
    {
        Model = DemoBase.Pretrained();
        Eval = DemoTask.Sentiment.Examples(64, 1000);
        BaseAccuracy = DemoEval.Accuracy(Eval, DemoEval.Answers((t, b) => Model.Forward(t, b), Eval));
    }

    internal LlamaForCausalLM Model { get; }

    internal List<DemoExample> Eval { get; }

    internal double BaseAccuracy { get; }
}

public sealed class DemoPromptLearningTests(DemoBaseFixture fixture, ITestOutputHelper output) : IClassFixture<DemoBaseFixture>
{
    [Theory]
    [InlineData("prompt")]
    [InlineData("p-tuning")]
    [InlineData("prefix")]
    public void LearnsTheSentimentTaskBeyondTheBasePlus30Points(string method)
    {
        var model = fixture.Model;
        var clock = Stopwatch.StartNew();
        var (adapter, trainer) = PromptLearningDemo.Train(model, method, DemoTask.Sentiment, seed: 0);
        try
        {
            var answers = DemoEval.Answers((t, b) => model.Forward(t, b), fixture.Eval);
            output.WriteLine("answers: " + string.Join(" | ", answers.Take(8)));
            double accuracy = DemoEval.Accuracy(fixture.Eval, answers);
            output.WriteLine($"{method}: base {fixture.BaseAccuracy:P0} → {accuracy:P0}, {adapter.Parameters.Sum(p => p.Count)} trainable, final loss {trainer.LastFiniteLoss:F3}, {clock.Elapsed.TotalSeconds:F1} s");
            Assert.True(accuracy >= fixture.BaseAccuracy + 0.30, $"{method}: accuracy {accuracy:P0}, base {fixture.BaseAccuracy:P0}");
        }
        finally
        {
            adapter.Detach();
        }
    }
}
