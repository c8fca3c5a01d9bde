using PeftKernels.Models;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// AdamW state on a device: gradient clipping measured and applied there, gradients read lazily by the host, and a
/// checkpoint of device-resident weights and moments that resumes to the uninterrupted run's losses.
/// </summary>
[Collection("Gpu")]
public class DeviceOptimizerTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    private static Parameter[] Parameters(int seed)
    {
        int[][] shapes = [[1], [7, 3], [70_000]];
        return [.. shapes.Select((shape, i) =>
        {
            var p = new Parameter(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed + i), shape, trainable: true);
            p.Grad = TestUtil.Random((int)p.Count, seed + 10 + i, 0.1f);
            return p;
        })];
    }

    [Fact]
    public void ClippingOnTheDeviceMatchesTheCpu()
    {
        var cpu = Parameters(1);
        var onDevice = Parameters(1);
        foreach (var p in onDevice)
        {
            p.MoveTo(Accel);
        }

        var cpuOptimizer = new AdamWOptimizer([new ParameterGroup(cpu)]);
        var deviceOptimizer = new AdamWOptimizer([new ParameterGroup(onDevice)]);
        double cpuNorm = cpuOptimizer.ClipGradNorm(0.5);
        int downloads = Tensor.GradDownloads;
        double deviceNorm = deviceOptimizer.ClipGradNorm(0.5);
        Assert.Equal(downloads, Tensor.GradDownloads);
        Assert.True(onDevice.All(p => p.HasDeviceGrad), "the gradients went to the device");

        // Both sum squares in double, in different groupings (1e-12 relative); the scale is then the same fp32 number and the
        // clipped gradients are one IEEE multiply each: identical.
        Assert.True(cpuNorm > 0.5, "the norm is above the limit, so the gradients are scaled");
        Assert.Equal(cpuNorm, deviceNorm, 1e-12 * cpuNorm);
        for (int i = 0; i < cpu.Length; i++)
        {
            Assert.Equal(cpu[i].Grad, onDevice[i].Grad);
        }

        Assert.Equal(downloads + cpu.Length, Tensor.GradDownloads);
        deviceOptimizer.Step(1e-2);
        cpuOptimizer.Step(1e-2);
        Assert.Equal(deviceOptimizer.StateBytes, deviceOptimizer.DeviceStateBytes);
        for (int i = 0; i < cpu.Length; i++)
        {
            Assert.Equal(cpu[i].Data, onDevice[i].Data);
            Assert.Equal(cpuOptimizer.State[i].V, deviceOptimizer.State[i].V);
        }

        deviceOptimizer.ZeroGrad();
        Assert.All(onDevice, p => Assert.False(p.HasDeviceGrad));
        Assert.All(onDevice, p => Assert.Null(p.Grad));
    }

    [Fact]
    public void ResumingOnTheAcceleratorReproducesTheUninterruptedLosses()
    {
        int[] inputs = [1, 7, 3, 39], labels = [7, 3, 39, 12];
        var options = new TrainerOptions { Steps = 2, LearningRate = 1e-3, WeightDecay = 0.01, MaxGradNorm = 0.5 };
        Trainer NewTrainer()
        {
            var model = LlamaModelTests.TinyModel(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1 });
            foreach (var (_, p) in model.NamedParameters())
            {
                p.Trainable = true;
            }

            model.To(Accel);
            return new Trainer(model, _ => (inputs, labels), 1, options);
        }

        var straight = NewTrainer();
        straight.Run();

        // Saved after one step, then loaded back into the same trainer (moments already on the device) and into a fresh one.
        using var temp = new TempFolder();
        var first = NewTrainer();
        first.Run(untilStep: 1);
        first.SaveCheckpoint(temp.Path);
        first.LoadCheckpoint(temp.Path);
        first.Run();
        var resumed = NewTrainer();
        resumed.LoadCheckpoint(temp.Path);
        Assert.Equal(1, resumed.Step);
        resumed.Run();

        // The device is deterministic: the same ops on the same values give the same bits.
        Assert.Equal(straight.Losses, first.Losses);
        Assert.Equal(straight.Losses, resumed.Losses);
        Assert.True(straight.Losses[1] < straight.Losses[0], "the run did not train");
        var expected = straight.Optimizer.State;
        foreach (var trainer in new[] { first, resumed })
        {
            Assert.Equal(expected.Count, trainer.Optimizer.State.Count);
            for (int i = 0; i < expected.Count; i++)
            {
                Assert.Equal(expected[i].Parameter.Data, trainer.Optimizer.State[i].Parameter.Data);
                Assert.Equal(expected[i].M, trainer.Optimizer.State[i].M);
                Assert.Equal(expected[i].V, trainer.Optimizer.State[i].V);
            }
        }
    }
}
