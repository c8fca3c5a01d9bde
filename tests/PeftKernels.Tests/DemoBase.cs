// The demo's --fast base for the method tests: Tiny(256) pre-trained for 150 steps on the demo's byte corpus
// (as DemoRunner.Pretrain does with --fast), then frozen. It learns the task words, never the task format.
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Tests;

internal static class DemoBase
{
    /// <summary>A freshly pre-trained, frozen demo base (the weights depend only on <paramref name="seed"/>).</summary>
    public static LlamaForCausalLM Pretrained(int seed = 0, Kernels.KernelOptions kernel = default)
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
            Kernel = kernel,
        }).Run();
        model.Freeze();
        return model;
    }
}
