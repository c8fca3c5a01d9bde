using PeftKernels.Models;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Full fine-tuning (every weight trainable, as `peft pretrain`) on a device: base-weight GEMM gradients, bias column sums,
/// the embedding scatter-add (tied with lm_head in the qwen2 variant), clipping and AdamW on the device, against the CPU.
/// </summary>
[Collection("Gpu")]
public class DeviceFullTrainingTests(GpuFixture gpu)
{
    private static readonly int[] Inputs = [1, 7, 3, 39, 12, 5, 7, 3];
    private static readonly int[] Labels = [7, 3, 39, 12, 5, 7, 3, 2];

    /// <summary>The tiny qwen2-style Llama: attention biases and lm_head tied to the embedding, every weight trainable.</summary>
    private static LlamaForCausalLM Model()
    {
        var model = LlamaModelTests.TinyModel(LlamaConfig.Tiny(40) with
        {
            ModelType = "qwen2",
            AttentionBias = true,
            TieWordEmbeddings = true,
            HeadDim = 16,
            RopeTheta = 1e6,
        });
        foreach (var (_, p) in model.NamedParameters())
        {
            p.Trainable = true;
        }

        return model;
    }

    private static (IReadOnlyList<double> Losses, float[][] Values, float[][] Initial, int GradDownloads) Train(LlamaForCausalLM model, Device device)
    {
        var initial = model.NamedParameters().Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        model.To(device);
        var options = new TrainerOptions { Steps = 2, LearningRate = 1e-3, WeightDecay = 0.01, MaxGradNorm = 0.5 };
        var trainer = new Trainer(model, _ => (Inputs, Labels), 1, options);
        int downloads = Tensor.GradDownloads;
        trainer.Run();
        downloads = Tensor.GradDownloads - downloads;
        Assert.Equal(device.IsGpu ? trainer.Optimizer.StateBytes : 0, trainer.Optimizer.DeviceStateBytes);

        // Read before moving back: the host Data of a device-stepped parameter is refreshed on read.
        var values = model.NamedParameters().Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        model.To(Device.Cpu);
        return (trainer.Losses, values, initial, downloads);
    }

    [Fact]
    public void FullFineTuningOnTheAcceleratorMatchesTheCpu() => AssertMatchesTheCpu(Device.FromAccelerator(gpu.Accelerator));

    [CudaFact]
    public void FullFineTuningOnCudaMatchesTheCpu() => AssertMatchesTheCpu(Device.Cuda());

    private static void AssertMatchesTheCpu(Device device)
    {
        var cpu = Train(Model(), Device.Cpu);
        var onDevice = Train(Model(), device);
        var tied = Model();
        Assert.Same(tied.LmHead.Weight, tied.Model.EmbedTokens.Weight);

        // Losses: fp32 in another summation order through 2 layers (dots of ≤ 176 terms): 1e-4 relative, as the LoRA tests.
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(cpu.Losses[s], onDevice.Losses[s], 1e-4 * Math.Abs(cpu.Losses[s]));
        }

        Assert.True(cpu.Losses[1] < cpu.Losses[0], "a step lowers the loss on its own batch");
        Assert.Equal(0, onDevice.GradDownloads);
        // Values: AdamW moves an entry by lr·m̂/(√v̂ + ε), about ±lr whatever the gradient's size. Where the gradient is well
        // above the summation noise (1e-4 of the tensor's largest), a 1e-4 relative gradient difference moves the entry by
        // ≲ 1e-4·lr = 1e-7 per step: 1e-6 absolute + 1e-4 relative. Where the gradient is at the noise level (a bias or norm
        // entry whose column sum nearly cancels), the two updates may differ by up to 2·lr per step: those entries may
        // differ by 2·lr·steps = 4e-3, and are allowed in 2% of a tensor at most. k_proj's bias is all noise: its exact
        // gradient is 0 (it adds q·b_k to every score of a query, and softmax ignores a per-query shift), so it gets the bound only.
        var names = Model().NamedParameters().Select(p => p.Name).ToArray();
        for (int i = 0; i < cpu.Values.Length; i++)
        {
            Assert.Contains(cpu.Values[i].Zip(cpu.Initial[i]), p => p.First != p.Second);
            int loose = 0;
            for (int j = 0; j < cpu.Values[i].Length; j++)
            {
                double diff = Math.Abs(onDevice.Values[i][j] - cpu.Values[i][j]);
                Assert.True(diff <= 4e-3, $"{names[i]}, element {j}: {onDevice.Values[i][j]} vs {cpu.Values[i][j]}");
                loose += diff > 1e-6 + (1e-4 * Math.Abs(cpu.Values[i][j])) ? 1 : 0;
            }

            Assert.True(names[i].EndsWith("k_proj.bias", StringComparison.Ordinal) || loose <= Math.Max(1, cpu.Values[i].Length / 50), $"{names[i]}: {loose} of {cpu.Values[i].Length} entries differ beyond 1e-6 + 1e-4·|ref|");
        }
    }
}
