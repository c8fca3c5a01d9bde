// The methods `peft demo --methods` compares on the sentiment task: each entry attaches a fresh,
// trainable adapter of one method to the pre-trained demo base and says how long to train it.
// LoRA-family methods go through PeftModel (adapters on Linear layers); the methods that attach to
// the whole model (prompt learning, bottleneck adapters, X-LoRA, MixLoRA) through IModelAdapter.
// Every entry is detached again after its run, so the next one starts from the same base.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Cli.Demo;

/// <summary>An adapter the demo trained: its size, saving and removal.</summary>
internal interface IDemoAdapter
{
    /// <summary>Trainable parameters of the adapter.</summary>
    long TrainableParameters { get; }

    /// <summary>Saves the adapter into <paramref name="folder"/> in its own layout.</summary>
    void Save(string folder);

    /// <summary>Removes the adapter from the model.</summary>
    void Detach();
}

/// <summary>One method of the comparison.</summary>
/// <param name="Name">As <c>peft train --method</c> spells it.</param>
/// <param name="Setting">The configuration, in words (for the table).</param>
/// <param name="FastSteps">Optimizer steps with --fast.</param>
/// <param name="Steps">Optimizer steps otherwise.</param>
/// <param name="LearningRate">Peak learning rate.</param>
/// <param name="Attach">Attaches a fresh trainable adapter to the (frozen) base, seeded.</param>
internal sealed record DemoMethod(string Name, string Setting, int FastSteps, int Steps, double LearningRate, Func<LlamaForCausalLM, int, IDemoAdapter> Attach);

/// <summary>The demo's method table.</summary>
internal static class DemoMethods
{
    /// <summary>Every method, in the order of the table.</summary>
    public static IReadOnlyList<DemoMethod> All { get; } =
    [
        new("lora", "r=8, α=16, all-linear", 200, 300, 4e-3,
            (model, seed) => PeftAdapter.Add(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed)),
        new("dora", "r=8, α=16, all-linear, use_dora", 200, 300, 4e-3,
            (model, seed) => PeftAdapter.Add(model, new LoraConfig { R = 8, LoraAlpha = 16, UseDora = true, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed)),
        new("ia3", "all-linear (down_proj, up_proj, gate_proj scale inputs)", 300, 400, 5e-2,
            (model, seed) => PeftAdapter.Add(model, new Ia3Config
            {
                TargetModules = TargetModules.FromRegex(TargetModules.AllLinear),
                FeedforwardModules = TargetModules.FromList("gate_proj", "up_proj", "down_proj"),
            }, seed)),
        new("prompt", "prompt tuning, TEXT init from 4 task examples", 60, 60, 3e-3, (model, seed) => DemoModelMethods.PromptLearning(model, "prompt", seed)),
        new("p-tuning", "32 virtual tokens, MLP encoder width 64", 200, 200, 3e-3, (model, seed) => DemoModelMethods.PromptLearning(model, "p-tuning", seed)),
        new("prefix", "8 virtual tokens, no projection", 100, 100, 3e-2, (model, seed) => DemoModelMethods.PromptLearning(model, "prefix", seed)),
        new("bottleneck", "Houlsby, reduction 16, identity start", 80, 80, 4e-3, DemoModelMethods.Bottleneck),
        new("xlora", "classifier over 2 LoRA experts (sentiment, topic)", 20, 20, 1e-2, DemoModelMethods.XLora),
        new("mixlora", "4 experts, top-2, r=8, all-linear", 80, 80, 4e-3, DemoModelMethods.MixLoraAdapter),
    ];

    /// <summary>A PeftModel adapter (LoRA, DoRA, IA³) as a demo adapter.</summary>
    private sealed class PeftAdapter(PeftModel peft, string name) : IDemoAdapter
    {
        public long TrainableParameters => peft.TrainableParameters().Trainable;

        public static PeftAdapter Add(LlamaForCausalLM model, LoraConfig config, int seed)
        {
            var peft = new PeftModel(model);
            peft.AddAdapter("default", config, seed);
            return new PeftAdapter(peft, "default");
        }

        public static PeftAdapter Add(LlamaForCausalLM model, Ia3Config config, int seed)
        {
            var peft = new PeftModel(model);
            peft.AddAdapter("default", config, seed);
            return new PeftAdapter(peft, "default");
        }

        public void Save(string folder)
        {
            peft.SaveAdapter(folder, name);
        }

        public void Detach() => peft.DeleteAdapter(name);
    }

    /// <summary>A whole-model adapter (<see cref="IModelAdapter"/>) as a demo adapter.</summary>
    internal sealed class ModelAdapter(IModelAdapter adapter) : IDemoAdapter
    {
        public long TrainableParameters => adapter.Parameters.Where(p => p.Trainable).Sum(p => p.Count);

        public void Save(string folder) => adapter.Save(folder);

        public void Detach() => adapter.Detach();
    }
}
