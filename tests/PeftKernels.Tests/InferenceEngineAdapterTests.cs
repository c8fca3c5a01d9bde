// The engine with many adapters and with adapters changing under it: 64 LoRA adapters of ranks 1 to
// 128 in one batch (one sequence each, fp32 and 4-bit base) must give each sequence its own adapter's
// tokens; replacing an adapter while a sequence runs on it leaves that sequence on the version it
// started with while new sequences get the new one; an unloaded adapter keeps serving its running
// sequence and is refused to new requests; tokens are credited to the adapter's counters.
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;

namespace PeftKernels.Tests;

public sealed class InferenceEngineAdapterTests
{
    private static readonly int[] Ranks = [1, 4, 16, 64, 128];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SixtyFourAdaptersOfRanksOneTo128InOneBatch(bool quantized)
    {
        using var folder = new TempFolder();
        var config = LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 64 };
        LlamaForCausalLM NewModel()
        {
            var m = TinyLlama.Model(config);
            if (quantized)
            {
                m.QuantizeLinears();
            }

            return m;
        }

        var reference = NewModel();
        var peft = new PeftModel(reference);
        var names = Enumerable.Range(0, 64).Select(i => $"a{i}").ToArray();
        for (int i = 0; i < names.Length; i++)
        {
            peft.AddAdapter(names[i], TinyLlama.Lora(i % 2 == 0 ? "all-linear" : "q_proj,v_proj,down_proj", r: Ranks[i % Ranks.Length], alpha: 8), seed: i);
            TinyLlama.Randomize(reference, names[i], 100 * i);
            peft.SaveAdapter(folder.Path, names[i]);
        }

        using var engine = new InferenceEngine(NewModel(), new EngineOptions { MaxRunningSequences = 64, MaxBatchTokens = 256, MaxSequenceLength = 32 });
        foreach (var name in names)
        {
            engine.Adapters.Load(name, Path.Combine(folder.Path, name));
        }

        var requests = names.Select((n, i) => new EngineRequest([1 + (i % 30), 2, 3], n, new SamplingParams(MaxTokens: 3))).ToList();
        var results = engine.Run(requests);
        for (int i = 0; i < names.Length; i += 7)
        {
            peft.SetAdapter(names[i]);
            Assert.Equal(reference.Generate(requests[i].PromptTokens, 3), results[i].Tokens);
        }

        Assert.Equal(2, engine.Stats.Steps - 1); // one prefill step for all 64, then two decode steps
        Assert.Equal(3, engine.Adapters.Stats(names[5]).Tokens);
    }

    [Fact]
    public void ReplacingAnAdapterLeavesRunningSequencesOnTheirVersion()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine();
        var prompt = new[] { 3, 1, 4, 1, 5 };
        var first = engine.Submit(new EngineRequest(prompt, "r8", new SamplingParams(MaxTokens: 10)));
        engine.Step();
        engine.Step();

        // Replace r8 by r32's folder, under the same name: the running sequence keeps r8's factors.
        engine.Adapters.Load("r8", fx.Folder("r32"));
        var second = engine.Submit(new EngineRequest(prompt, "r8", new SamplingParams(MaxTokens: 10)));
        engine.Step();
        engine.Adapters.Unload("r1");
        engine.RunUntilIdle();
        Assert.Equal(fx.Greedy(prompt, 10, "r8"), first.Result!.Tokens);
        Assert.Equal(fx.Greedy(prompt, 10, "r32"), second.Result!.Tokens);
        Assert.NotEqual(first.Result.Tokens, second.Result.Tokens);
        Assert.DoesNotContain(engine.Adapters.Snapshot(), a => a.Name == "r8" && a.Version == 1); // freed once its sequence finished
        Assert.Throws<KeyNotFoundException>(() => engine.Submit(new EngineRequest(prompt, "r1")));
    }

    [Fact]
    public void AnUnloadedAdapterServesItsRunningSequenceToTheEnd()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine();
        var prompt = new[] { 9, 8, 7 };
        var running = engine.Submit(new EngineRequest(prompt, "dora", new SamplingParams(MaxTokens: 8)));
        engine.Step();
        Assert.True(engine.Adapters.Unload("dora"));
        engine.RunUntilIdle();
        Assert.Equal(fx.Greedy(prompt, 8, "dora"), running.Result!.Tokens);
        Assert.DoesNotContain(engine.Adapters.Snapshot(), a => a.Name == "dora");
    }

    [Fact]
    public void LoadingOrUnloadingAnAdapterRepacksOnlyItsChunkAndKeepsOtherSlots()
    {
        using var fx = new EngineFixture();
        using var engine = fx.Engine();
        for (int i = 0; i < 6; i++)
        {
            engine.Adapters.Load($"copy{i}", fx.Folder(EngineFixture.AdapterNames[i % 5]));
        }

        var names = EngineFixture.AdapterNames.Concat(Enumerable.Range(0, 6).Select(i => $"copy{i}")).ToArray();
        var (table, _) = engine.TableAndSlot(null);
        var slots = names.Select(n => engine.TableAndSlot(n).Slot).ToArray();
        Assert.Equal(names.Length, slots.Distinct().Count());
        long builds = table.ChunkBuilds;

        engine.Adapters.Load("late", fx.Folder("r32"));
        int late = engine.TableAndSlot("late").Slot;
        Assert.Equal(builds + 1, table.ChunkBuilds);
        Assert.Equal(slots, names.Select(n => engine.TableAndSlot(n).Slot).ToArray());

        // A freed slot is reused; sequences on the other adapters still get their own tokens.
        Assert.True(engine.Adapters.Unload("copy0"));
        engine.TableAndSlot(null);
        engine.Adapters.Load("again", fx.Folder("dora"));
        Assert.Equal(slots[Array.IndexOf(names, "copy0")], engine.TableAndSlot("again").Slot);
        var prompt = new[] { 5, 6, 7 };
        var results = engine.Run([new EngineRequest(prompt, "late", new SamplingParams(MaxTokens: 5)), new EngineRequest(prompt, "again", new SamplingParams(MaxTokens: 5)),
            new EngineRequest(prompt, "copy4", new SamplingParams(MaxTokens: 5))]);
        Assert.Equal(fx.Greedy(prompt, 5, "r32"), results[0].Tokens);
        Assert.Equal(fx.Greedy(prompt, 5, "dora"), results[1].Tokens);
        Assert.Equal(fx.Greedy(prompt, 5, "ia3"), results[2].Tokens);
        Assert.NotEqual(-1, late);
    }
}
