// Prompt tuning, P-tuning and prefix tuning on a demo task (docs/formats/prompt-learning.md#demo): the settings that
// take the demo's tiny base (Tiny(256), `peft demo --fast`) past its accuracy + 30 points on the sentiment task, for
// `peft demo --methods`. On that base the frozen model mostly learns the answer format and the majority label:
//   prompt:   TEXT init from four task examples (prompt + answer, bytes; N = their length), lr 3e-3, 60 steps;
//   p-tuning: N 32, MLP width 64, lr 3e-3, 200 steps;
//   prefix:   N 8, no projection, lr 3e-2, 100 steps.
// Batches of 16 examples, warm-up a tenth of the steps, AdamW with the Trainer's defaults.
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;

namespace PeftKernels.Cli.Demo;

/// <summary>Trains a prompt-learning adapter on a demo task with the demo's settings.</summary>
internal static class PromptLearningDemo
{
    /// <summary>The methods, as <c>peft train --method</c> spells them.</summary>
    public static readonly string[] Methods = ["prompt", "p-tuning", "prefix"];

    /// <summary>The TEXT init of prompt tuning: four examples of the task, prompt and answer.</summary>
    public static string InitText(DemoTask task) => string.Concat(task.Examples(4, 99).Select(e => e.Prompt + e.Answer));

    /// <summary>The config the demo uses for <paramref name="method"/> (prompt, p-tuning or prefix) on <paramref name="task"/>.</summary>
    public static PromptLearningConfig Config(string method, DemoTask task) => method switch
    {
        "prompt" => new PromptLearningConfig(PromptLearningConfig.PromptTuningType)
        {
            NumVirtualTokens = InitText(task).Length,
            PromptTuningInit = PromptTuningInit.Text,
            PromptTuningInitText = InitText(task),
        },
        "p-tuning" => new PromptLearningConfig(PromptLearningConfig.PTuningType) { NumVirtualTokens = 32, EncoderHiddenSize = 64 },
        "prefix" => new PromptLearningConfig(PromptLearningConfig.PrefixTuningType) { NumVirtualTokens = 8 },
        _ => throw new ArgumentException($"'{method}' is not a prompt-learning method; use prompt, p-tuning or prefix.", nameof(method)),
    };

    /// <summary>Optimizer steps of 16 examples.</summary>
    public static int Steps(string method) => method switch
    {
        "prompt" => 60,
        "p-tuning" => 200,
        _ => 100,
    };

    /// <summary>Peak learning rate.</summary>
    public static double LearningRate(string method) => method == "prefix" ? 3e-2 : 3e-3;

    /// <summary>Attaches the adapter to <paramref name="model"/> (its base frozen) and trains it on <paramref name="task"/>.</summary>
    public static (PromptLearningAdapter Adapter, Trainer Trainer) Train(LlamaForCausalLM model, string method, DemoTask task, int seed, Nn.ForwardContext? context = null)
    {
        var config = Config(method, task);
        int[]? initIds = config.PromptTuningInitText is { } text ? [.. text.Select(c => (int)c)] : null;
        var adapter = PromptLearningAdapter.Attach(model, config, seed, initIds);
        int steps = Steps(method);
        var trainer = new Trainer(model, rng => task.Batch(rng, 16), 16, new TrainerOptions
        {
            Steps = steps,
            LearningRate = LearningRate(method),
            WarmupSteps = steps / 10,
            Seed = seed,
            Kernel = context?.Kernel ?? default,
        });
        trainer.Run();
        return (adapter, trainer);
    }
}
