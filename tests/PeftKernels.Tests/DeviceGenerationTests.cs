using PeftKernels.Autograd;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Generation with the KV cache on a device (the shared ILGPU CPU accelerator standing in for CUDA): greedy and
/// seeded sampling give the CPU's tokens, cached decoding gives the full forward's logits, Truncate then continue
/// is a fresh run, and a cache on the wrong device, of the wrong model or full is refused with a clear message.
/// </summary>
[Collection("Gpu")]
public class DeviceGenerationTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Fact]
    public void GreedyAndSeededSamplingOnTheAcceleratorGiveTheCpuTokens()
    {
        var model = DeviceTests.Model(quantizedWithLora: false);
        var sampling = new GenerationOptions(Temperature: 1.3f, TopP: 0.9f, Seed: 11);
        var cpuGreedy = model.Generate([1, 7, 3], 4);
        var cpuSampled = model.Generate([1, 7, 3], 4, sampling);
        model.To(Accel);
        var gpuGreedy = model.Generate([1, 7, 3], 4);
        var gpuSampled = model.Generate([1, 7, 3], 4, sampling);

        // Logits agree to ~1e-4 relative (see DeviceTests); no argmax or sampling boundary of this seeded run lies that close.
        Assert.Equal(cpuGreedy, gpuGreedy);
        Assert.Equal(cpuSampled, gpuSampled);
        Assert.Equal(4, gpuGreedy.Length);
    }

    [Fact]
    public void CachedDecodingOnTheAcceleratorMatchesTheFullForward()
    {
        // Batch 2 with different rows: each row's keys live at its own offset in the layer's device buffer.
        int[] tokens = [1, 7, 3, 39, 12, 5, 30, 4, 9, 9, 1, 17];
        const int t = 6, prompt = 4;
        var model = DeviceTests.Model(quantizedWithLora: false);
        model.To(Accel);
        int vocab = model.Config.VocabSize;
        using var scope = Tape.NoGrad();
        var full = model.Forward(tokens, batch: 2).Data;
        using var cache = model.CreateCache(capacity: 8, batch: 2);
        Assert.Same(Accel, cache.Device);
        var prefill = model.Forward([.. tokens[..prompt], .. tokens[t..(t + prompt)]], 2, cache).Data;

        // The same device kernels over the same positions; only the attention's key-tile summation and GEMM row blocking
        // differ between one 6-row pass and the cached steps: 1e-4 of the logit range, as for device vs CPU logits.
        double atol = 1e-4 * full.Max(MathF.Abs);
        for (int b = 0; b < 2; b++)
        {
            TestUtil.AssertClose(prefill.AsSpan(b * prompt * vocab, prompt * vocab), full.AsSpan(b * t * vocab, prompt * vocab), atol, 1e-4, $"prefill row {b}");
        }

        for (int i = prompt; i < t; i++)
        {
            var step = model.Forward([tokens[i], tokens[t + i]], 2, cache).Data;
            for (int b = 0; b < 2; b++)
            {
                TestUtil.AssertClose(step.AsSpan(b * vocab, vocab), full.AsSpan(((b * t) + i) * vocab, vocab), atol, 1e-4, $"decode row {b} position {i}");
            }
        }

        Assert.Equal(t, cache.Length);
    }

    [Fact]
    public void TruncateThenContinueEqualsAFreshRun()
    {
        var model = DeviceTests.Model(quantizedWithLora: false);
        model.To(Accel);
        int[] prompt = [3, 14, 15, 9];
        using var scope = Tape.NoGrad();
        using var reused = model.CreateCache(8);
        model.Forward(prompt, 1, reused);
        model.Forward([26], 1, reused);
        reused.Truncate(prompt.Length);
        var continued = model.Forward([35], 1, reused).Data;
        var next = model.Forward([8], 1, reused).Data;

        using var fresh = model.CreateCache(8);
        model.Forward(prompt, 1, fresh);
        var expected = model.Forward([35], 1, fresh).Data;
        var expectedNext = model.Forward([8], 1, fresh).Data;

        // The same kernels on the same inputs in the same order: the stale row 4 is overwritten, so bit for bit equal.
        Assert.Equal(expected, continued);
        Assert.Equal(expectedNext, next);
        Assert.Equal(prompt.Length + 2, reused.Length);
    }

    [Fact]
    public void CachesOnTheWrongDeviceOfTheWrongShapeOrFullAreRefused()
    {
        var model = DeviceTests.Model(quantizedWithLora: false);
        var c = model.Config;
        using var scope = Tape.NoGrad();
        using var hostCache = model.CreateCache(4);
        Assert.Same(Device.Cpu, hostCache.Device);
        using var deviceCache = new KvCache(c.NumHiddenLayers, 1, 4, c.NumKeyValueHeads * c.HeadDim, Accel);

        var onCpu = Assert.Throws<ArgumentException>(() => model.Forward([1, 2], 1, deviceCache));
        Assert.Contains($"the KV cache is on {Accel} but the model runs on cpu", onCpu.Message);
        model.To(Accel);
        var onGpu = Assert.Throws<ArgumentException>(() => model.Forward([1, 2], 1, hostCache));
        Assert.Contains($"the KV cache is on cpu but the model runs on {Accel}", onGpu.Message);

        using var shallow = new KvCache(1, 1, 4, c.NumKeyValueHeads * c.HeadDim, Accel);
        Assert.Contains("the KV cache has 1 layers of kvDim 32; the model has 2 layers", Assert.Throws<ArgumentException>(() => model.Forward([1], 1, shallow)).Message);

        model.Forward([1, 2, 3], 1, deviceCache);
        var full = Assert.Throws<InvalidOperationException>(() => model.Forward([4, 5], 1, deviceCache));
        Assert.Contains("KV cache is full: 3 positions stored, 2 more requested, capacity 4", full.Message);
        Assert.Equal(3, deviceCache.Length);

        deviceCache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.Forward([4], 1, deviceCache));
        Assert.Contains("KV cache dims must be positive", Assert.Throws<ArgumentException>(() => new KvCache(2, 1, 0, 32, Accel)).Message);
    }
}
