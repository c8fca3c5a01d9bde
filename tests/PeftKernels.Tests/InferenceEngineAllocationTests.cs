// Decoding allocates nothing once warm: 100 engine steps of a decoding sequence (batch 1 and batch 3,
// with LoRA, DoRA and IA³ adapters and without, fp32 and 4-bit base, exact and integer GEMV) allocate
// no managed memory on the stepping thread (the fork-join workers run the same allocation-free kernels).
// The hooks of the whole-model adapter kinds (bottleneck sites, MixLoRA's MLP, X-LoRA's scaling pass) run
// once any such adapter was loaded in the process; they are armed first, so the result does not depend on
// which tests ran before: a step without such rows must still allocate nothing.
using PeftKernels.Engine;

namespace PeftKernels.Tests;

public sealed class InferenceEngineAllocationTests
{
    [Theory]
    [InlineData(false, false, 1, new[] { "" })]
    [InlineData(false, false, 2, new[] { "r8" })]
    [InlineData(true, false, 1, new[] { "dora", "ia3", "r32" })]
    [InlineData(true, true, 2, new[] { "" })]
    public void HundredDecodeStepsAllocateNothing(bool quantized, bool integer, int threads, string[] adapters)
    {
        EngineBottleneck.ArmHooks();
        EngineMixLora.ArmHooks();
        EngineXLora.ArmHooks();
        using var fx = new EngineFixture(quantized);
        using var engine = fx.Engine(new EngineOptions { Threads = threads, IntegerDecode = integer, MaxSequenceLength = 250 });
        foreach (var adapter in adapters)
        {
            engine.Submit(new EngineRequest([1, 2, 3, 4, 5], adapter == "" ? null : adapter, new SamplingParams(MaxTokens: 240)));
        }

        for (int i = 0; i < 20; i++)
        {
            engine.Step();
        }

        // The smaller of two trials of 100 steps: something allocated once (a JIT tier-up on this thread) is not per token.
        long allocated = long.MaxValue;
        for (int trial = 0; trial < 2 && allocated > 0; trial++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 100; i++)
            {
                Assert.True(engine.Step());
            }

            allocated = Math.Min(allocated, GC.GetAllocatedBytesForCurrentThread() - before);
        }

        Assert.Equal(adapters.Length, engine.RunningCount);
        Assert.Equal(0, allocated);
    }
}
