// The device engine (model on the shared ILGPU CPU accelerator standing in for CUDA) serving adapter
// kinds beyond LoRA / DoRA / IA³, mixed in one batch with LoRA and base requests, against the CPU engine
// with the same requests: equal greedy tokens and, at every sampled step, logits within fp32 tolerance.
// Bottleneck: Houlsby (swish, both sites), Pfeiffer (channel scaling, original_ln_before), parallel
// (constant scaling 4), a Stack over a Fuse and an Average; their sites run the library's device ops on
// the sequence's rows with no extra wait (exactly one wait per step, counted by DeviceSync). MixLoRA (one
// adapter with attention LoRA and MLP experts, one with MLP experts only) next to LoRA and base rows:
// exactly 1 + layers × 2 waits per step (each block call reads its top-k routing once). X-LoRA (a plain
// one, a layerwise top-1 one, and a two-layer classifier whose scaling pass runs the experts at
// scaling_pass_value 0.5) next to
// LoRA and base rows: the scaling pass and the classifiers stay on the device, one wait per step.
using PeftKernels.Engine;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Peft.XLora;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public sealed class DeviceEngineMethodsTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    private static int[] Prompt(int seed, int length, int vocab) => DeviceEngineTests.Prompt(seed, length, vocab);

    /// <summary>Saves bottleneck folders bn, pf, par, fused (Stack(Fuse(bn, pf))) and avg (Average(bn, par)) under <paramref name="root"/>.</summary>
    private static void SaveBottlenecks(EngineFixture fx, string root)
    {
        var owner = fx.NewModel();
        var set = BottleneckAdapters.Of(owner);
        set.Add("bn", BottleneckConfig.Houlsby() with { ReductionFactor = 8 }, seed: 1);
        set.Add("pf", BottleneckConfig.Pfeiffer() with { ReductionFactor = 8, ScalingKind = BottleneckScalingKind.Channel }, seed: 2);
        set.Add("par", BottleneckConfig.Parallel() with { ReductionFactor = 8 }, seed: 3);
        BottleneckAdapterTests.Randomize(set, 5);
        var fuse = AdapterSetup.Fuse("bn", "pf");
        set.AddFusion(fuse, seed: 4);
        BottleneckAdapterTests.Randomize(set, 6);
        foreach (var (name, setup) in new (string, AdapterSetup)[]
        {
            ("bn", "bn"), ("pf", "pf"), ("par", "par"), ("fused", AdapterSetup.Stack(fuse)), ("avg", AdapterSetup.Average([0.3, 0.7], "bn", "par")),
        })
        {
            set.ActiveSetup = setup;
            set.Save(Path.Combine(root, name));
        }

        set.Detach();
    }

    /// <summary>Saves MixLoRA folders mix (attention LoRA + 4 experts, top-2) and mlp (3 experts on up/down, top-1) under <paramref name="root"/>.</summary>
    private static void SaveMixLoras(EngineFixture fx, string root)
    {
        foreach (var (name, config, seed) in new (string, MixLoraConfig, int)[]
        {
            ("mix", new MixLoraConfig { NumExperts = 4, TopK = 2, R = 4, LoraAlpha = 8, LoraDropout = 0 }, 3),
            ("mlp", new MixLoraConfig { NumExperts = 3, TopK = 1, R = 2, LoraAlpha = 4, LoraDropout = 0, UseRsLora = true, TargetModules = ["up_proj", "down_proj"] }, 5),
        })
        {
            var model = fx.NewModel();
            var adapter = MixLoraEngineTests.AttachRandomized(model, config, seed);

            adapter.Save(Path.Combine(root, name));
        }
    }

    private InferenceEngine Engine(EngineFixture fx, EngineOptions options, bool onDevice, string root, IEnumerable<string> extra)
    {
        var model = fx.NewModel();
        if (onDevice)
        {
            model.To(Accel);
        }

        var engine = new InferenceEngine(model, options);
        foreach (var name in EngineFixture.AdapterNames)
        {
            engine.Adapters.Load(name, fx.Folder(name));
        }

        foreach (var name in extra)
        {
            engine.Adapters.Load(name, Path.Combine(root, name));
        }

        return engine;
    }

    private static Dictionary<long, List<float[]>> Record(InferenceEngine engine) => DeviceEngineTests.Record(engine);

    [Fact]
    public void BottleneckCompositionsLoraAndBaseInOneBatchMatchTheCpuEngineWithOneWaitPerStep()
    {
        using var fx = new EngineFixture();
        using var folder = new TempFolder();
        SaveBottlenecks(fx, folder.Path);
        string?[] mix = [null, "bn", "r8", "fused", "avg", "pf", "dora", "par"];
        var (device, waits) = Compare(fx, folder.Path, ["bn", "pf", "par", "fused", "avg"], mix, maxTokens: 3);

        // The bottleneck sites queue their ops: the step's one wait (the logits download) is the only one.
        Assert.Equal(device.Steps, waits);
        Assert.True(device.SiteLaunches > 0);
    }

    [Fact]
    public void MixLoraLoraAndBaseInOneBatchMatchTheCpuEngineWithOneWaitPerStepAndBlockCall()
    {
        using var fx = new EngineFixture();
        using var folder = new TempFolder();
        SaveMixLoras(fx, folder.Path);
        string?[] mix = ["mix", null, "r8", "mlp", "mix"];
        var (device, waits) = Compare(fx, folder.Path, ["mix", "mlp"], mix, maxTokens: 2);

        // Every step holds rows of both MixLoRA adapters: one block call per adapter and layer, each waiting once for its routing.
        int layers = fx.Reference.Config.NumHiddenLayers;
        Assert.Equal(2, device.Steps);
        Assert.Equal(device.Steps * layers * 2, device.MixLoraBlockCalls);
        Assert.Equal(device.Steps * (1 + (layers * 2)), waits);
    }

    [Fact]
    public void XLoraLoraAndBaseInOneBatchMatchTheCpuEngineWithOneWaitPerStep()
    {
        using var fx = new EngineFixture();
        using var folder = new TempFolder();
        string[] experts = [fx.Folder("r1"), fx.Folder("r32")];
        foreach (var (name, config, seed) in new (string, XLoraConfig, int)[]
        {
            ("xl", new XLoraConfig(), 1),
            ("xt", new XLoraConfig { LayerwiseScalings = true, TopKLora = 1, SoftmaxTemperature = 0.5 }, 2),
            ("xd", new XLoraConfig { XLoraDepth = 2, XLoraSize = 8, ScalingPassValue = 0.5, GlobalScalingWeight = 0.8 }, 3),
        })
        {
            var xlora = XLoraModel.Attach(fx.NewModel(), config, experts, seed);
            XLoraTests.RandomizeClassifier(xlora, 10 * seed, 0.5f);
            xlora.Save(Path.Combine(folder.Path, name));
        }

        string?[] mix = ["xl", null, "r8", "xd", "xt", "xl"];
        var (device, waits) = Compare(fx, folder.Path, ["xl", "xt", "xd"], mix, maxTokens: 3);
        Assert.Equal(device.Steps, waits);
    }

    /// <summary>
    /// Runs one request per entry of <paramref name="adapters"/> on the CPU engine and the device engine (both with the fixture's
    /// adapters and <paramref name="extra"/> loaded); asserts equal tokens and close logits; returns the device's counters and its waits.
    /// </summary>
    private ((long Steps, long SiteLaunches, long MixLoraBlockCalls) Device, long Waits) Compare(EngineFixture fx, string root, string[] extra, string?[] adapters, int maxTokens)
    {
        var requests = adapters.Select((a, i) => new EngineRequest(Prompt(i + 80, 2 + (i * 3 % 5), fx.Vocab), a, new SamplingParams(MaxTokens: maxTokens))).ToList();
        var options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8, BlockSize = 4 };
        using var cpu = Engine(fx, options, onDevice: false, root, extra);
        using var device = Engine(fx, options, onDevice: true, root, extra);
        var cpuLogits = Record(cpu);
        var deviceLogits = Record(device);
        var expected = cpu.Run(requests);
        long waits = DeviceSync.Count(gpu.Accelerator);
        var got = device.Run(requests);
        waits = DeviceSync.Count(gpu.Accelerator) - waits;
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(FinishReason.Length, got[i].Finish);
            Assert.Equal(expected[i].Tokens, got[i].Tokens);
        }

        foreach (var (id, steps) in cpuLogits)
        {
            Assert.Equal(steps.Count, deviceLogits[id].Count);
            for (int t = 0; t < steps.Count; t++)
            {
                TestUtil.AssertClose(deviceLogits[id][t], steps[t], 1e-4 * Math.Max(1, steps[t].Max(MathF.Abs)), 1e-4, $"sequence {id} step {t}");
            }
        }

        Assert.Equal(0, device.Pool.UsedBlocks);
        var forward = device.DeviceForward!;
        return ((device.Stats.Steps, forward.SiteLaunches, forward.MixLoraBlockCalls), waits);
    }
}
