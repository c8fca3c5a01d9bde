// The rows of `peft demo --methods` whose adapters attach to the whole model (IModelAdapter):
// prompt tuning, P-tuning, prefix tuning, bottleneck adapters, X-LoRA and MixLoRA. Each factory
// attaches a fresh trainable adapter to the frozen demo base with the settings that the method's
// own demo test found to take the --fast base (Tiny(256)) past base accuracy + 30 points:
//   prompt / p-tuning / prefix: PromptLearningDemo (docs/formats/prompt-learning.md#demo);
//   bottleneck: Houlsby (mh_adapter + output_adapter, reduction 16), identity start (mam_adapter init);
//   mixlora:    4 experts, top-2, r 8, α 16, router aux-loss coefficient 0.01, every linear layer;
//   xlora:      two LoRA experts trained first (sentiment 80 steps, topic 25 steps, r 8, lr 1e-2) and
//               saved as PEFT folders, then only the classifier over them trains.
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Peft.XLora;
using PeftKernels.Training;

namespace PeftKernels.Cli.Demo;

/// <summary>Factories of the whole-model demo adapters.</summary>
internal static class DemoModelMethods
{
    /// <summary>The MixLoRA configuration of the demo row.</summary>
    public static MixLoraConfig MixLora { get; } = new() { NumExperts = 4, TopK = 2, R = 8, LoraAlpha = 16, LoraDropout = 0, RouterAuxLossCoef = 0.01 };

    /// <summary>Prompt tuning, P-tuning or prefix tuning with the demo's settings on the sentiment task.</summary>
    public static IDemoAdapter PromptLearning(LlamaForCausalLM model, string method, int seed)
    {
        var config = PromptLearningDemo.Config(method, DemoTask.Sentiment);
        int[]? initIds = config.PromptTuningInitText is { } text ? [.. text.Select(c => (int)c)] : null;
        return new DemoMethods.ModelAdapter(PromptLearningAdapter.Attach(model, config, seed, initIds));
    }

    /// <summary>A Houlsby bottleneck adapter starting as the identity.</summary>
    public static IDemoAdapter Bottleneck(LlamaForCausalLM model, int seed) =>
        new DemoMethods.ModelAdapter(BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { InitWeights = "mam_adapter" }, seed, "sentiment"));

    /// <summary>X-LoRA over two LoRA experts trained here (sentiment and topic), saved to a temporary folder and loaded back.</summary>
    public static IDemoAdapter XLora(LlamaForCausalLM model, int seed)
    {
        var temp = Directory.CreateTempSubdirectory("peft-demo-xlora-");
        try
        {
            var experts = new List<string>();
            foreach (var (task, steps) in new[] { (DemoTask.Sentiment, 80), (DemoTask.Topic, 25) })
            {
                var peft = new PeftModel(model);
                peft.AddAdapter("default", new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed + experts.Count);
                new Trainer(model, rng => task.Batch(rng, 16), 16, new TrainerOptions { Steps = steps, LearningRate = 1e-2, WarmupSteps = steps / 10, Seed = seed + experts.Count })
                    .Run();
                string dir = Path.Combine(temp.FullName, task.Name);
                peft.SaveAdapter(dir);
                peft.DeleteAdapter("default");
                experts.Add(dir);
            }

            return new DemoMethods.ModelAdapter(XLoraModel.Attach(model, new XLoraConfig(), experts, seed));
        }
        finally
        {
            temp.Delete(recursive: true);
        }
    }

    /// <summary>MixLoRA with the demo's configuration.</summary>
    public static IDemoAdapter MixLoraAdapter(LlamaForCausalLM model, int seed) => new DemoMethods.ModelAdapter(Peft.MixLoraAdapter.Attach(model, MixLora, seed));
}
