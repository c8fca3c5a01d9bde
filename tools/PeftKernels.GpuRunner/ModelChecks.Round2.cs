// The round-2 PEFT methods on the runner's device against the CPU device (issue 20; the suite's
// DeviceRound2MethodsTests on ILGPU's CPU accelerator): prompt tuning, prefix tuning with the
// projection, a Houlsby bottleneck adapter with a learned scaling, and MixLoRA (4 experts, top-2,
// load-balancing loss). For each, on the one-layer tiny Llama with randomized trainable weights:
// one step's loss and every trainable gradient (1e-4 relative to the tensor's largest), and greedy
// generation (cached decode) giving the same tokens.
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Testing;

namespace PeftKernels.GpuRunner;

internal static partial class ModelChecks
{
    private static void Round2Checks(Device device, Report report)
    {
        var methods = new (string Name, Func<LlamaForCausalLM> Create)[]
        {
            ("prompt tuning", () => Randomized(m => PromptLearningAdapter.Attach(m, new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 3 }, seed: 4))),
            ("prefix tuning (projection)", () => Randomized(m => PromptLearningAdapter.Attach(m,
                new PromptLearningConfig(PromptLearningConfig.PrefixTuningType) { NumVirtualTokens = 2, PrefixProjection = true, EncoderHiddenSize = 5 }, seed: 4))),
            ("bottleneck (Houlsby)", () => Randomized(m => BottleneckAdapters.Attach(m,
                BottleneckConfig.Houlsby() with { ReductionFactor = 8, NonLinearity = "swish", ScalingKind = BottleneckScalingKind.Learned }, seed: 2), range: 0.2f)),
            ("MixLoRA (4 experts, top-2)", () => Randomized(m => MixLoraAdapter.Attach(m,
                new MixLoraConfig { NumExperts = 4, TopK = 2, R = 4, LoraAlpha = 8, LoraDropout = 0, RouterAuxLossCoef = 0.01 }, seed: 3), range: 0.3f)),
        };
        foreach (var (name, create) in methods)
        {
            var cpuModel = create();
            var deviceModel = create();
            cpuModel.Train(true);
            deviceModel.Train(true);
            SameGradients(report, name, TinyLlama.LossAndGrads(cpuModel, Device.Cpu), TinyLlama.LossAndGrads(deviceModel, device), atLeast: 1);
            cpuModel.Train(false);
            deviceModel.Train(false);
            int[] prompt = [1, 7, 3];
            var expected = cpuModel.Generate(prompt, 4);
            deviceModel.To(device);
            int[] actual;
            try
            {
                actual = deviceModel.Generate(prompt, 4);
            }
            finally
            {
                deviceModel.To(Device.Cpu);
            }

            int differ = expected.Zip(actual, (e, a) => e == a ? 0 : 1).Sum() + Math.Abs(expected.Length - actual.Length);
            report.Add(new CheckResult($"{name}: greedy generation", $"{Tiny} 1 layer, 4 new tokens", differ, 0, 0, 0, differ == 0,
                $"device [{string.Join(' ', actual)}], CPU [{string.Join(' ', expected)}]"));
        }
    }

    /// <summary>The one-layer tiny Llama with the method attached and its trainable weights in U(−range, range) (seeded).</summary>
    private static LlamaForCausalLM Randomized(Action<LlamaForCausalLM> attach, float range = 0.5f)
    {
        var model = TinyLlama.OneLayer();
        attach(model);
        int seed = 10;
        foreach (var (_, p) in model.NamedParameters().Where(p => p.Parameter.Trainable))
        {
            TinyLlama.Uniform(p.Data.Length, seed++, range).CopyTo(p.Data, 0);
        }

        return model;
    }
}
