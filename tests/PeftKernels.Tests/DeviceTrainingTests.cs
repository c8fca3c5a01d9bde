using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// LoRA training on a device: loss, backward through every device op and the LoRA gradients, and whole Trainer steps
/// (clipping and AdamW on the device, no gradient downloaded) on the shared ILGPU CPU accelerator, compared with the CPU device.
/// </summary>
[Collection("Gpu")]
public class DeviceTrainingTests(GpuFixture gpu)
{
    private static readonly int[] Inputs = [1, 7, 3, 39, 12, 5];
    private static readonly int[] Labels = [7, 3, 39, 12, 5, 2];

    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>The tiny Llama (HeadDim 16), optionally 4-bit, with a randomized LoRA adapter on every Linear (no dropout).</summary>
    private static LlamaForCausalLM Model(bool quantized)
    {
        var model = LlamaModelTests.TinyModel();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        Lora.Apply(model, PeftModelTests.Config("all-linear", r: 4, alpha: 8), seed: 2);
        PeftModelTests.Randomize(model, "default", 5);
        return model;
    }

    private static (float Loss, float[][] Grads) LossAndGrads(LlamaForCausalLM model, Device device)
    {
        model.To(device);
        var loss = model.Loss(Inputs, Labels);
        float value = loss.Item();
        loss.Backward();
        var grads = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Parameter.Grad!).ToArray();
        model.To(Device.Cpu);
        return (value, grads);
    }

    private static (IReadOnlyList<double> Losses, float[][] Values, int GradDownloads, long DeviceStateBytes, long StateBytes) Train(
        LlamaForCausalLM model, Device device, int steps)
    {
        model.To(device);
        var trainer = new Trainer(model, _ => (Inputs, Labels), 1, new TrainerOptions { Steps = steps, LearningRate = 1e-2, MaxGradNorm = 0.5 });
        int downloads = Tensor.GradDownloads;
        trainer.Run();
        downloads = Tensor.GradDownloads - downloads;
        var values = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        model.To(Device.Cpu);
        return (trainer.Losses, values, downloads, trainer.Optimizer.DeviceStateBytes, trainer.Optimizer.StateBytes);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraGradientsOnTheAcceleratorMatchTheCpu(bool quantized)
    {
        var (cpuLoss, cpuGrads) = LossAndGrads(Model(quantized), Device.Cpu);
        var (gpuLoss, gpuGrads) = LossAndGrads(Model(quantized), Accel);

        // fp32 on both sides, the same NF4 values; only the summation order of GEMMs, norms, attention and the
        // cross-entropy differs (dots of ≤ 176 terms through 2 layers and back): 1e-4 relative, plus 1e-4 of the
        // largest gradient of the tensor for entries that nearly cancel.
        Assert.Equal(cpuLoss, gpuLoss, 1e-4 * Math.Abs(cpuLoss));
        Assert.Equal(cpuGrads.Length, gpuGrads.Length);
        Assert.True(cpuGrads.Length >= 14, "every Linear has A and B");
        for (int i = 0; i < cpuGrads.Length; i++)
        {
            Assert.Contains(cpuGrads[i], g => g != 0);
            TestUtil.AssertClose(gpuGrads[i], cpuGrads[i], 1e-4 * cpuGrads[i].Max(MathF.Abs), 1e-4, $"gradient {i}");
        }
    }

    [Fact]
    public void TrainerStepsOnTheAcceleratorMatchTheCpu()
    {
        var initial = Model(false).NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        var cpu = Train(Model(false), Device.Cpu, 2);
        var gpu = Train(Model(false), Accel, 2);

        // Losses: as the gradients above (1e-4 relative). Values: AdamW's first steps move each entry by about ±lr
        // whatever the gradient's size, so a 1e-4 relative gradient difference moves an entry by ≲ 1e-4·lr per step;
        // 2 steps at lr 1e-2 give 2e-6, and 1e-5 leaves room for the clipping norm's own rounding.
        Assert.Equal(2, gpu.Losses.Count);
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(cpu.Losses[s], gpu.Losses[s], 1e-4 * Math.Abs(cpu.Losses[s]));
        }

        Assert.True(cpu.Losses[1] < cpu.Losses[0], "a step lowers the loss on its own batch");

        // On the device the gradients, clipping and AdamW stay there: no gradient comes to the host, every moment is in device memory.
        Assert.Equal(0, gpu.GradDownloads);
        Assert.Equal((0L, gpu.StateBytes), (cpu.DeviceStateBytes, gpu.DeviceStateBytes));
        Assert.True(gpu.StateBytes > 0);
        for (int i = 0; i < cpu.Values.Length; i++)
        {
            Assert.Contains(cpu.Values[i].Zip(initial[i]), p => p.First != p.Second);
            TestUtil.AssertClose(gpu.Values[i], cpu.Values[i], 1e-5, 1e-4, $"parameter {i} after 2 steps");
        }
    }

    [CudaFact]
    public void LoraTrainingOnCudaMatchesTheCpu()
    {
        var (cpuLoss, cpuGrads) = LossAndGrads(Model(true), Device.Cpu);
        var (gpuLoss, gpuGrads) = LossAndGrads(Model(true), Device.Cuda());
        var cpu = Train(Model(false), Device.Cpu, 2);
        var gpu = Train(Model(false), Device.Cuda(), 2);

        // As on the CPU accelerator: fp32 in another summation order (fp32 GEMMs unless Tf32 is asked for).
        Assert.Equal(cpuLoss, gpuLoss, 1e-4 * Math.Abs(cpuLoss));
        for (int i = 0; i < cpuGrads.Length; i++)
        {
            TestUtil.AssertClose(gpuGrads[i], cpuGrads[i], 1e-4 * cpuGrads[i].Max(MathF.Abs), 1e-4, $"CUDA gradient {i}");
        }

        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(cpu.Losses[s], gpu.Losses[s], 1e-4 * Math.Abs(cpu.Losses[s]));
        }

        for (int i = 0; i < cpu.Values.Length; i++)
        {
            TestUtil.AssertClose(gpu.Values[i], cpu.Values[i], 1e-5, 1e-4, $"CUDA parameter {i} after 2 steps");
        }
    }
}
