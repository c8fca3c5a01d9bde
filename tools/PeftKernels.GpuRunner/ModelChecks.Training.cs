// Two Trainer steps (clipping at 0.5, AdamW) of the tiny Llama on the accelerator's Device from the
// same start as on the CPU device (as tests/DeviceTrainingTests, DeviceDoraTests, DeviceIa3Tests,
// DeviceFullTrainingTests): the losses within 1e-4 relative, and the trained parameters. AdamW's
// first steps move an entry by about ±lr whatever the gradient's size, so a 1e-4 relative gradient
// difference moves it by ≲ 1e-4·lr per step: adapters at lr 1e-2 are compared at 1e-5 + 1e-4·|cpu|,
// full fine-tuning (lr 1e-3) at 1e-6 + 1e-4·|cpu|. Except where a gradient is at the summation-noise
// level (1e-4 of its tensor's largest: a bias or norm entry whose column sum nearly cancels, an
// entry of A whose two steps' gradients nearly cancel, as seen with QLoRA): AdamW's m̂/√v̂ then
// amplifies the noise, and the two updates may differ by up to 2·lr per step. Those entries are
// allowed in at most max(1, 2%) of a tensor (k_proj's bias, whose exact gradient is 0, entirely),
// within 2·lr·steps. Each check also requires the CPU loss to fall and every trained tensor to move.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Testing;
using PeftKernels.Training;

namespace PeftKernels.GpuRunner;

internal static partial class ModelChecks
{
    private sealed record TrainRun(IReadOnlyList<double> Losses, string[] Names, float[][] Initial, float[][] Values, long StateBytes, long DeviceStateBytes);

    private static TrainRun Train(LlamaForCausalLM model, Device device, TrainerOptions options, int[] inputs, int[] labels)
    {
        var trained = model.NamedParameters().Where(p => p.Parameter.Trainable).ToArray();
        var initial = trained.Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        model.To(device);
        try
        {
            var trainer = new Trainer(model, _ => (inputs, labels), 1, options);
            trainer.Run();

            // Read before moving back: the host Data of a device-stepped parameter is refreshed on read.
            var values = trained.Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
            return new TrainRun(trainer.Losses, [.. trained.Select(p => p.Name)], initial, values, trainer.Optimizer.StateBytes, trainer.Optimizer.DeviceStateBytes);
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }

    private static readonly TrainerOptions AdapterOptions = new() { Steps = 2, LearningRate = 1e-2, MaxGradNorm = 0.5 };

    /// <summary>Losses 1e-4 relative; the CPU loss falls; every trained tensor moves on the CPU.</summary>
    private static void CompareLosses(Report report, string what, string shape, TrainRun cpu, TrainRun gpu)
    {
        bool falls = cpu.Losses.Count == 2 && cpu.Losses[1] < cpu.Losses[0];
        int still = cpu.Values.Zip(cpu.Initial).Count(p => p.First.SequenceEqual(p.Second));
        Close(report, $"{what} training: losses of 2 steps", shape,
            [([.. gpu.Losses.Select(l => (float)l)], [.. cpu.Losses.Select(l => (float)l)], 0)], 1e-4,
            string.Join(" ", cpu.Losses.Select(l => l.ToString("F4", System.Globalization.CultureInfo.InvariantCulture))) +
            (falls ? "" : "; FAIL: the CPU loss does not fall") + (still == 0 ? "" : $"; FAIL: {still} trained tensors did not move"),
            falls && still == 0);
    }

    private static void LoraTraining(Device device, Report report, bool quantized)
    {
        LlamaForCausalLM Create() => WithLora(quantized);

        string what = quantized ? "QLoRA (NF4 base)" : "LoRA (fp32 base)";
        string shape = $"{Tiny}, r4 all-linear, 6 tokens, lr 1e-2";
        SameGradients(report, what, TinyLlama.LossAndGrads(Create(), Device.Cpu), TinyLlama.LossAndGrads(Create(), device), atLeast: 14); // 7 Linears × 2 layers × (A, B)
        var cpu = Train(Create(), Device.Cpu, AdapterOptions, TinyLlama.Inputs, TinyLlama.Labels);
        var gpu = Train(Create(), device, AdapterOptions, TinyLlama.Inputs, TinyLlama.Labels);
        CompareLosses(report, what, shape, cpu, gpu);

        // On the device, gradients, clipping and AdamW stay there: every moment is in device memory.
        CompareParameters(report, what, shape, cpu, gpu, AdapterOptions, 1e-5, stateOnDevice: true);
    }

    private static void AdapterTraining(Device device, Report report, string what, Func<LlamaForCausalLM> create, int gradients)
    {
        string shape = $"{Tiny} 1 layer, 6 tokens, lr 1e-2";
        SameGradients(report, what, TinyLlama.LossAndGrads(create(), Device.Cpu), TinyLlama.LossAndGrads(create(), device), gradients);
        var cpu = Train(create(), Device.Cpu, AdapterOptions, TinyLlama.Inputs, TinyLlama.Labels);
        var gpu = Train(create(), device, AdapterOptions, TinyLlama.Inputs, TinyLlama.Labels);
        CompareLosses(report, what, shape, cpu, gpu);
        CompareParameters(report, what, shape, cpu, gpu, AdapterOptions, 1e-5, stateOnDevice: false);
    }

    /// <summary>Every weight of the tiny qwen2-style Llama (attention biases, lm_head tied to the embedding) trainable, as `peft pretrain`.</summary>
    private static void FullTraining(Device device, Report report)
    {
        static LlamaForCausalLM Create()
        {
            var model = TinyLlama.Model(LlamaConfig.Tiny(40) with { ModelType = "qwen2", AttentionBias = true, TieWordEmbeddings = true, HeadDim = 16, RopeTheta = 1e6 });
            foreach (var (_, p) in model.NamedParameters())
            {
                p.Trainable = true;
            }

            return model;
        }

        int[] inputs = [1, 7, 3, 39, 12, 5, 7, 3];
        int[] labels = [7, 3, 39, 12, 5, 7, 3, 2];
        var options = new TrainerOptions { Steps = 2, LearningRate = 1e-3, WeightDecay = 0.01, MaxGradNorm = 0.5 };
        string shape = $"{Tiny} qwen2 tied, 8 tokens, lr 1e-3";
        var cpu = Train(Create(), Device.Cpu, options, inputs, labels);
        var gpu = Train(Create(), device, options, inputs, labels);
        CompareLosses(report, "full fine-tuning", shape, cpu, gpu);

        CompareParameters(report, "full fine-tuning", shape, cpu, gpu, options, 1e-6, stateOnDevice: true);
    }

    /// <summary>
    /// Every entry within 2·lr·steps of the CPU's, and all but max(1, 2%) of each tensor's entries (all of k_proj's bias
    /// may be noise) within <paramref name="atol"/> + 1e-4·|cpu|; with <paramref name="stateOnDevice"/>, every AdamW moment
    /// in device memory (gradients, clipping and AdamW stay on the device).
    /// </summary>
    private static void CompareParameters(Report report, string what, string shape, TrainRun cpu, TrainRun gpu, TrainerOptions options, double atol, bool stateOnDevice)
    {
        double bound = 2 * options.LearningRate * options.Steps;
        double maxAbs = 0, maxRel = 0;
        int looseTotal = 0;
        var failures = new List<string>();
        for (int i = 0; i < cpu.Values.Length; i++)
        {
            int loose = 0;
            for (int j = 0; j < cpu.Values[i].Length; j++)
            {
                float c = cpu.Values[i][j], g = gpu.Values[i][j];
                double diff = float.IsFinite(g) ? Math.Abs((double)g - c) : double.PositiveInfinity;
                maxAbs = Math.Max(maxAbs, diff);
                maxRel = Math.Max(maxRel, diff / Math.Max(Math.Abs((double)c), 1e-30));
                if (!(diff <= bound))
                {
                    failures.Add($"{cpu.Names[i]}[{j}]: {g} vs {c}");
                }

                loose += diff > atol + (1e-4 * Math.Abs(c)) ? 1 : 0;
            }

            looseTotal += loose;
            if (!cpu.Names[i].EndsWith("k_proj.bias", StringComparison.Ordinal) && loose > Math.Max(1, cpu.Values[i].Length / 50))
            {
                failures.Add($"{cpu.Names[i]}: {loose} of {cpu.Values[i].Length} beyond {atol:G2} + 1e-4·|cpu|");
            }
        }

        if (stateOnDevice && !(gpu.StateBytes > 0 && gpu.DeviceStateBytes == gpu.StateBytes))
        {
            failures.Add($"optimizer state on the device: {gpu.DeviceStateBytes} of {gpu.StateBytes} bytes");
        }

        report.Add(new CheckResult($"{what} training: parameters after 2 steps", $"{shape}, {cpu.Values.Length} tensors", maxAbs, maxRel, atol, 1e-4, failures.Count == 0,
            failures.Count == 0
                ? $"({looseTotal} entries at the gradient-noise level beyond it, all within {bound:G2}{(stateOnDevice ? "; AdamW state on the device" : "")})"
                : "FAIL: " + string.Join("; ", failures.Take(5))));
    }
}
