// The inference engine with its model on a device (the shared ILGPU CPU accelerator standing in for
// CUDA) against the same engine on the CPU: the same requests, options and adapters must give the same
// greedy tokens and, at every sampled step, the same logits within fp32 tolerance (the device GEMM, SGMV
// and attention sum in other orders): base requests; LoRA of ranks 1, 8 (rsLoRA, lora bias) and 32,
// DoRA and IA³ in one batch; an NF4 base; prompts prefilled in chunks under a small token budget with
// sequences queued; a shared prompt prefix; preemption and cancellation; prompt tuning (virtual K/V
// uploaded into the device blocks). Copy on write of a shared block copies on the device; after the
// first step no device buffer is allocated and no adapter is uploaded; `peft generate`'s engine path
// runs on the device. Bottleneck, MixLoRA and X-LoRA adapters on the device: DeviceEngineMethodsTests.
using PeftKernels.Engine;
using PeftKernels.Peft;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public sealed class DeviceEngineTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>A seeded random prompt of <paramref name="length"/> token ids below <paramref name="vocab"/> (shared with DeviceEngineMethodsTests).</summary>
    internal static int[] Prompt(int seed, int length, int vocab)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => rng.Next(vocab))];
    }

    private InferenceEngine DeviceEngine(EngineFixture fx, EngineOptions options)
    {
        var model = fx.NewModel();
        model.To(Accel);
        var engine = new InferenceEngine(model, options);
        foreach (var name in EngineFixture.AdapterNames)
        {
            engine.Adapters.Load(name, fx.Folder(name));
        }

        return engine;
    }

    /// <summary>Every sampled step's logits per sequence id (shared with DeviceEngineMethodsTests).</summary>
    internal static Dictionary<long, List<float[]>> Record(InferenceEngine engine)
    {
        var seen = new Dictionary<long, List<float[]>>();
        engine.ObserveLogits = (s, logits) =>
        {
            if (!seen.TryGetValue(s.Id, out var list))
            {
                seen[s.Id] = list = [];
            }

            list.Add(logits.ToArray());
        };
        return seen;
    }

    /// <summary>Runs <paramref name="requests"/> through both engines; asserts equal tokens and close logits; returns (cpu, device) results.</summary>
    private (IReadOnlyList<EngineResult> Cpu, IReadOnlyList<EngineResult> Device) Compare(EngineFixture fx, EngineOptions options, IReadOnlyList<EngineRequest> requests,
        Action<InferenceEngine>? check = null)
    {
        using var cpu = fx.Engine(options);
        using var device = DeviceEngine(fx, options);
        Assert.True(device.Device.IsGpu);
        var cpuLogits = Record(cpu);
        var deviceLogits = Record(device);
        var expected = cpu.Run(requests);
        var sequences = requests.Select(device.Submit).ToList();
        device.Step();
        long uploads = device.DeviceForward!.Adapters.Uploads;
        int growths = device.DeviceForward.Growths;
        device.RunUntilIdle();
        var got = sequences.Select(q => q.Result!).ToList();

        // After the first step (which loads the adapters it needs), no device buffer is allocated and no adapter uploaded.
        Assert.Equal(uploads, device.DeviceForward.Adapters.Uploads);
        Assert.Equal(growths, device.DeviceForward.Growths);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(expected[i].Finish, got[i].Finish);
            Assert.Equal(expected[i].Tokens, got[i].Tokens);
        }

        Assert.Equal(cpuLogits.Keys.Order(), deviceLogits.Keys.Order());
        foreach (var (id, steps) in cpuLogits)
        {
            Assert.Equal(steps.Count, deviceLogits[id].Count);
            for (int t = 0; t < steps.Count; t++)
            {
                double atol = 1e-4 * Math.Max(1, steps[t].Max(MathF.Abs));
                TestUtil.AssertClose(deviceLogits[id][t], steps[t], atol, 1e-4, $"sequence {id} step {t}");
            }
        }

        Assert.Equal(0, device.Pool.UsedBlocks);
        check?.Invoke(device);
        return (expected, got);
    }

    [Fact]
    public void BaseLoraOfThreeRanksDoraAndIa3InOneBatchMatchTheCpuEngine()
    {
        using var fx = new EngineFixture();
        string?[] mix = [null, "r1", "r8", "r32", "dora", "ia3"];
        var requests = mix.Select((a, i) => new EngineRequest(Prompt(i, 1 + (i * 3 % 8), fx.Vocab), a, new SamplingParams(MaxTokens: 2))).ToList();
        Compare(fx, new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 8, BlockSize = 4 }, requests, device =>
        {
            Assert.Equal(32, device.DeviceForward!.Adapters.MaxRank);
            Assert.True(device.DeviceForward.Adapters.Bytes > 0);
        });
    }

    [Fact]
    public void AnNf4BaseMatchesTheCpuEngine()
    {
        using var fx = new EngineFixture(quantized: true);
        string?[] mix = [null, "r8", "dora"];
        var requests = mix.Select((a, i) => new EngineRequest(Prompt(i + 20, 3 + i, fx.Vocab), a, new SamplingParams(MaxTokens: 2))).ToList();
        Compare(fx, new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 4, BlockSize = 4 }, requests);
    }

    [Fact]
    public void ChunkedPrefillWithQueuedSequencesMatchesTheCpuEngine()
    {
        using var fx = new EngineFixture();
        string?[] mix = ["r32", "ia3", "dora"];
        var requests = mix.Select((a, i) => new EngineRequest(Prompt(i + 40, new[] { 7, 2, 5 }[i], fx.Vocab), a, new SamplingParams(MaxTokens: 2))).ToList();
        Compare(fx, new EngineOptions { MaxBatchTokens = 4, MaxRunningSequences = 2, BlockSize = 4 }, requests,
            device => Assert.True(device.Stats.Steps > 3, "a budget of 4 tokens splits the prompts over several steps"));
    }

    [Fact]
    public void PreemptionUnderTooFewBlocksMatchesTheCpuEngine()
    {
        using var fx = new EngineFixture();
        var requests = Enumerable.Range(0, 3).Select(i => new EngineRequest(Prompt(i + 10, 3, fx.Vocab), new[] { "r1", "dora", null }[i], new SamplingParams(MaxTokens: 4))).ToList();
        Compare(fx, new EngineOptions { MaxBatchTokens = 32, MaxRunningSequences = 3, BlockSize = 2, KvBlocks = 8 }, requests,
            device => Assert.True(device.Stats.Preemptions > 0, "3 sequences of 7 positions (4 blocks of 2 each) cannot fit 8 blocks at once"));
    }

    [Fact]
    public void ASharedPrefixAndACancelledSequenceMatchTheCpuEngine()
    {
        using var fx = new EngineFixture();
        var prefix = Prompt(5, 9, fx.Vocab);
        var results = new List<EngineResult[]>();
        var logits = new List<Dictionary<long, List<float[]>>>();
        foreach (bool onDevice in new[] { false, true })
        {
            var options = new EngineOptions { MaxBatchTokens = 64, BlockSize = 4 };
            using var engine = onDevice ? DeviceEngine(fx, options) : fx.Engine(options);
            logits.Add(Record(engine));
            var first = engine.Submit(new EngineRequest(prefix, "r8", new SamplingParams(MaxTokens: 3)));
            var cancelled = engine.Submit(new EngineRequest(prefix[..5], null, new SamplingParams(MaxTokens: 50)));
            engine.Step();
            var second = engine.Submit(new EngineRequest([.. prefix, 3, 4], "r8", new SamplingParams(MaxTokens: 2)));
            engine.Step();
            cancelled.Cancel();
            engine.RunUntilIdle();
            results.Add([first.Result!, second.Result!, cancelled.Result!]);
            Assert.Equal(8, second.Result!.CachedPromptTokens); // 2 full blocks of 4 computed by the first sequence
            Assert.Equal(FinishReason.Cancelled, cancelled.Result!.Finish);
            Assert.Equal(0, engine.Pool.UsedBlocks);
        }

        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(results[0][i].Tokens, results[1][i].Tokens);
        }

        foreach (var (id, steps) in logits[0])
        {
            for (int t = 0; t < steps.Count; t++)
            {
                TestUtil.AssertClose(logits[1][id][t], steps[t], 1e-4 * Math.Max(1, steps[t].Max(MathF.Abs)), 1e-4, $"sequence {id} step {t}");
            }
        }
    }

    [Fact]
    public void CopyOnWriteOfASharedBlockCopiesOnTheDevice()
    {
        var pool = new KvBlockPool(2, 1, 3, 4, 6, gpu.Accelerator);
        var a = pool.CreateSequence();
        for (int p = 0; p < 6; p++)
        {
            a.Append(p);
            for (int l = 0; l < 2; l++)
            {
                a.Write(l, p, [(10 * l) + p, 1, 2], [-p, l, 0]);
            }
        }

        var b = a.Fork();
        Assert.True(b.TryAppend(9)); // b's last block (positions 4, 5) is shared: b gets a device copy
        Assert.NotEqual(a.BlockTable[1], b.BlockTable[1]);
        for (int l = 0; l < 2; l++)
        {
            var keys = gpu.Download(pool.Device!.Keys(l));
            var values = gpu.Download(pool.Device.Values(l));
            for (int slot = 0; slot < 2; slot++)
            {
                int from = ((a.BlockTable[1] * 4) + slot) * 3, to = ((b.BlockTable[1] * 4) + slot) * 3;
                Assert.Equal(keys.AsSpan(from, 3).ToArray(), keys.AsSpan(to, 3).ToArray());
                Assert.Equal(values.AsSpan(from, 3).ToArray(), values.AsSpan(to, 3).ToArray());
                Assert.Equal((10 * l) + 4 + slot, keys[to]);
            }
        }

        Assert.Throws<InvalidOperationException>(() => pool.KeyBlock(0, 0).ToArray());
        a.Free();
        b.Free();
        pool.Device!.Dispose();
    }

    [Fact]
    public void PromptTuningWritesItsVirtualPositionsIntoTheDeviceBlocks()
    {
        using var fx = new EngineFixture();
        using var folder = new TempFolder();
        var owner = fx.NewModel();
        PromptLearningAdapter.Attach(owner, new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 6 }, seed: 3).Save(folder.Path);
        var options = new EngineOptions { MaxBatchTokens = 64, MaxRunningSequences = 4, BlockSize = 4 };
        var tokens = new List<int[]>();
        foreach (bool onDevice in new[] { false, true })
        {
            using var engine = onDevice ? DeviceEngine(fx, options) : fx.Engine(options);
            engine.Adapters.Load("prompt", folder.Path);
            var results = engine.Run([.. Enumerable.Range(0, 3).Select(i => new EngineRequest(Prompt(i + 60, 3 + i, fx.Vocab), i == 1 ? "r8" : "prompt", new SamplingParams(MaxTokens: 2)))]);
            tokens.AddRange(results.Select(r => r.Tokens));
            Assert.True(engine.Stats.VirtualPositionsCopied > 0);
        }

        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(tokens[i], tokens[i + 3]);
        }
    }

    [Fact]
    public void AdapterWeightsAreUploadedOnceWhenLoadedAndFreedWhenUnloaded()
    {
        using var fx = new EngineFixture();
        using var engine = DeviceEngine(fx, new EngineOptions { MaxBatchTokens = 16, MaxRunningSequences = 4 });
        var adapters = engine.DeviceForward!.Adapters;
        engine.TableAndSlot(null);
        long all = adapters.Bytes, uploads = adapters.Uploads;
        Assert.True(all > 0);
        engine.TableAndSlot(null);
        Assert.Equal(uploads, adapters.Uploads); // nothing changed, nothing uploaded
        Assert.True(engine.Adapters.Unload("r32"));
        engine.TableAndSlot(null);
        Assert.InRange(adapters.Bytes, 1, all - 1); // r32's factors are freed (its chunk is re-packed without it)
        foreach (var name in EngineFixture.AdapterNames.Where(n => n != "r32"))
        {
            Assert.True(engine.Adapters.Unload(name));
        }

        engine.TableAndSlot(null);
        Assert.Equal(0, adapters.Bytes);
    }

    [Fact]
    public void PeftGenerateRunsItsEngineOnTheDevice()
    {
        // `peft generate --device cuda` moves the model to the device and runs GenerateEngine there (the CLI's own path).
        using var fx = new EngineFixture();
        Cli.GenerateRequest[] requests =
        [
            new(1, Prompt(70, 4, fx.Vocab), false, fx.Folder("r8"), new SamplingParams(MaxTokens: 2)),
            new(2, Prompt(71, 3, fx.Vocab), false, null, new SamplingParams(MaxTokens: 2)),
        ];
        var settings = new Cli.EngineSettings(4, 64, 1, IntegerDecode: false);
        var cpu = Cli.GenerateEngine.Run(fx.NewModel(), requests, settings, r => $"line {r.Line}");
        var model = fx.NewModel();
        var device = Cli.GenerateEngine.Run(model, requests, settings with { On = Accel }, r => $"line {r.Line}");
        Assert.Same(Accel, model.Device);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(FinishReason.Length, device[i].Finish);
            Assert.Equal(cpu[i].Tokens, device[i].Tokens);
        }
    }
}
