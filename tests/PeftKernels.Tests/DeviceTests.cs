using PeftKernels.Autograd;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Models;
using PeftKernels.Ops;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Tensors and the Llama forward on a device: the shared ILGPU CPU accelerator stands in for CUDA
/// (same kernels, simulated threads), compared with the CPU device; plus the two small device
/// kernels (broadcast add, embedding gather) and the device API.
/// </summary>
[Collection("Gpu")]
public class DeviceTests(GpuFixture gpu)
{
    private static readonly int[] Tokens = [1, 7, 3, 39, 12];

    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>A tiny Qwen2-like model (q/k/v biases exercise the bias add), optionally 4-bit with a LoRA adapter on every Linear.</summary>
    internal static LlamaForCausalLM Model(bool quantizedWithLora)
    {
        var model = LlamaModelTests.TinyModel(PeftModelTests.Qwen2Like);
        if (quantizedWithLora)
        {
            model.QuantizeLinears();
            Lora.Apply(model, PeftModelTests.Config("all-linear", r: 4, alpha: 8), seed: 2);
            PeftModelTests.Randomize(model, "default", 5);
        }

        return model;
    }

    /// <summary>Logits of <paramref name="model"/> on <paramref name="device"/> for <see cref="Tokens"/> as batch 1 (and tokens [..4] as batch 2, when asked).</summary>
    internal static (float[] One, float[] Two) Logits(LlamaForCausalLM model, Device device, bool batchTwo = true)
    {
        model.To(device);
        using var scope = Tape.NoGrad();
        var one = model.Forward(Tokens);
        var two = batchTwo ? model.Forward(Tokens[..4], batch: 2) : one;
        Assert.Same(device, one.Device);
        var result = (one.Data, two.Data);
        model.To(Device.Cpu);
        return result;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LogitsOnTheAcceleratorMatchTheCpu(bool quantizedWithLora)
    {
        // The simulated accelerator is slow: the 4-bit + LoRA variant runs batch 1 only (the QLoRA tiled path; n ≤ 4 would take the GEMV).
        var model = Model(quantizedWithLora);
        var (cpuOne, cpuTwo) = Logits(model, Device.Cpu, !quantizedWithLora);
        var (gpuOne, gpuTwo) = Logits(model, Accel, !quantizedWithLora);

        // fp32 on both sides, the same dequantized NF4 values; only the summation order of the GEMMs, norms and
        // attention differs (dots of ≤ 176 terms through 2 layers): 1e-4 of the logit range.
        double atol = 1e-4 * cpuOne.Max(MathF.Abs);
        TestUtil.AssertClose(gpuOne, cpuOne, atol, 1e-4, "batch 1 logits");
        TestUtil.AssertClose(gpuTwo, cpuTwo, atol, 1e-4, "batch 2 logits");
    }

    [Fact]
    public void ScoreAndGreedyGenerationMatchTheCpu()
    {
        var model = Model(quantizedWithLora: false);
        double cpuScore = model.Score(Tokens);
        var cpuTokens = model.Generate([1, 7], 3);
        model.To(Accel);
        double gpuScore = model.Score(Tokens);
        var gpuTokens = model.Generate([1, 7], 3);
        model.To(Device.Cpu);

        // The loss is a mean of 4 log-softmax terms over logits equal within 1e-4 relative (see above).
        Assert.Equal(cpuScore, gpuScore, 1e-4);
        Assert.Equal(cpuTokens, gpuTokens);
    }

    [Fact]
    public void TensorsMoveBetweenDevicesAndDeviceViewsNameTheirDevice()
    {
        var host = new Tensor([1f, 2f, 3f, 4f, 5f, 6f], 2, 3);
        var onDevice = host.To(Accel);
        Assert.NotSame(host, onDevice);
        Assert.Same(Accel, onDevice.Device);
        Assert.Same(onDevice, onDevice.To(Accel));
        var back = onDevice.To(Device.Cpu);
        Assert.Same(Device.Cpu, back.Device);
        Assert.Equal(host.Data, back.Data);

        var bf16 = new Tensor(new ushort[] { 0x3F80, 0xC000 }, 2).To(Accel);
        Assert.Equal([2f, -4f], Ops.Functional.Add(bf16, bf16).Data);

        var e = Assert.Throws<InvalidOperationException>(() => host.View(Accel));
        Assert.Contains("is on cpu", e.Message);
        var mixed = Assert.Throws<ArgumentException>(() => Ops.Functional.Add(onDevice, host));
        Assert.Contains("b is on cpu", mixed.Message);
    }

    [Fact]
    public void DeviceNamesParseAndCudaIsRefusedWhereAbsent()
    {
        Assert.Same(Device.Cpu, Device.Parse(" CPU "));
        Assert.Contains("unknown device 'tpu'", Assert.Throws<ArgumentException>(() => Device.Parse("tpu")).Message);
        if (Device.CudaUnavailableReason is { } reason)
        {
            Assert.Same(Device.Cpu, Device.Default);
            Assert.Contains("no CUDA device", Assert.Throws<InvalidOperationException>(() => Device.Parse("cuda")).Message);
            Assert.Contains(reason, Assert.Throws<InvalidOperationException>(Device.Cuda).Message);
        }
        else
        {
            Assert.True(Device.Default.IsGpu);
            Assert.Same(Device.Default, Device.Parse("cuda"));
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 17)]
    [InlineData(7, 33)]
    public void AddKernelAddsWholeTensorsAndBiasRowsInPlace(int n, int dim)
    {
        var a = TestUtil.Random(n * dim, 1);
        var b = TestUtil.Random(n * dim, 2);
        var bias = TestUtil.Random(dim, 3);
        using var da = gpu.Upload(a);
        using var db = gpu.Upload(b);
        using var dbias = gpu.Upload(bias);
        using var y = gpu.Poisoned(n * dim);
        AddKernels.Forward(gpu.Accelerator, da.View, db.View, y.View);
        AddKernels.Forward(gpu.Accelerator, da.View, dbias.View, da.View);

        // One fp32 addition per element on both sides: exact.
        Assert.Equal(a.Zip(b, (p, q) => p + q).ToArray(), gpu.Download(y.View));
        Assert.Equal(a.Select((p, i) => p + bias[i % dim]).ToArray(), gpu.Download(da.View));
    }

    [Fact]
    public void EmbeddingKernelGathersRowsAndRepeatsIds()
    {
        const int vocab = 5, dim = 3;
        var weight = TestUtil.Random(vocab * dim, 4);
        int[] ids = [4, 0, 4, 2];
        using var dw = gpu.Upload(weight);
        using var dids = gpu.Upload(ids);
        using var y = gpu.Poisoned(ids.Length * dim);
        EmbeddingKernels.Forward(gpu.Accelerator, dw.View, dids.View, y.View, ids.Length, vocab, dim);
        Assert.Equal(ids.SelectMany(id => weight.Skip(id * dim).Take(dim)).ToArray(), gpu.Download(y.View));
    }

    [Fact]
    public void DeviceKernelsNameTheBadView()
    {
        using var four = gpu.Upload(new float[4]);
        using var three = gpu.Upload(new float[3]);
        using var ids = gpu.Upload(new int[2]);
        Assert.Contains("b", Assert.Throws<ArgumentException>(() => AddKernels.Forward(gpu.Accelerator, four.View, three.View, four.View)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => AddKernels.Forward(gpu.Accelerator, four.View, four.View, three.View)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => EmbeddingKernels.Forward(gpu.Accelerator, four.View, ids.View, three.View, 2, 2, 2)).ParamName);
        Assert.Equal("ids", Assert.Throws<ArgumentException>(() => EmbeddingKernels.Forward(gpu.Accelerator, four.View, ids.View, four.View, 1, 2, 2)).ParamName);
    }

    [CudaFact]
    public void LogitsOnCudaMatchTheCpu()
    {
        var model = Model(quantizedWithLora: true);
        var (cpuOne, cpuTwo) = Logits(model, Device.Cpu);
        var (gpuOne, gpuTwo) = Logits(model, Device.Cuda());

        // As on the CPU accelerator: fp32 GEMMs in another order (fp32 unless Tf32 is asked for).
        double atol = 1e-4 * cpuOne.Max(MathF.Abs);
        TestUtil.AssertClose(gpuOne, cpuOne, atol, 1e-4, "batch 1 logits on CUDA");
        TestUtil.AssertClose(gpuTwo, cpuTwo, atol, 1e-4, "batch 2 logits on CUDA");
    }
}
