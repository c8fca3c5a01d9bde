// Decode steps of the inference engine (InferenceEngine.Step) on the ~125M Llama config (random fp32
// weights, seed 1) with a prepared running batch: every sequence has its 16-token prompt in the paged
// KV cache and decodes one token per step, so one invocation is one decode step of the whole batch.
//   OneSequence      1 sequence on one LoRA adapter (rank 32): batch-1 decode
//   OneAdapter       64 sequences, all on that adapter
//   ManyAdapters     64 sequences, one adapter each (ranks 8, 16, 32, 64 cycling)
// Adapters are LoRA on every linear layer with a random non-zero B, saved to a temporary folder and
// loaded with engine.Adapters.Load. Sequences may generate 1024 (one sequence) or 128 (64 sequences)
// tokens; one that reaches it is replaced by a new one, whose prompt is then computed within the next
// measured step (rare in a short job). The cache grows by one position a step, so later steps attend
// over slightly more positions. Flops: 2 per base linear weight (layers and lm_head) per decoded row;
// Bytes: the base weights read once per step. `peft bench serve` measures whole runs of the same
// scenarios (with prefill, 8 adapters, the merged model and adapter-by-adapter batches).
// Run: dotnet run -c Release --project bench/PeftKernels.Bench -- --filter '*EngineBench*' --job short
// (setup builds the model and up to 64 adapters and prefills the batch: a few minutes in all on 2 cores).
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Bench;

/// <summary>One engine decode step: batch-1, 64 sequences on one adapter, 64 sequences on 64 adapters.</summary>
public class EngineBench : IWorkload
{
    private const int Prompt = 16;
    private static readonly int[] RankCycle = [8, 16, 32, 64];
    private InferenceEngine engine = null!;
    private string folder = "";
    private int sequences;
    private int adapters;
    private int maxTokens;
    private int submitted;

    [Params("OneSequence", "OneAdapter", "ManyAdapters")]
    public string Batch { get; set; } = "OneSequence";

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * BaseWeights() * Rows(benchmarkCase.Param<string>("Batch"));

    public double Bytes(BenchmarkCase benchmarkCase) => 4.0 * BaseWeights();

    [GlobalSetup]
    public void Setup()
    {
        sequences = Rows(Batch);
        adapters = Batch == "ManyAdapters" ? 64 : 1;
        maxTokens = sequences == 1 ? 1024 : 128;
        var model = LlamaForCausalLM.Create(LlamaConfig.Llama125M(), seed: 1);
        folder = Path.Combine(Path.GetTempPath(), $"peft-engine-bench-{Guid.NewGuid():N}");
        SaveAdapters(model, folder, adapters);
        int length = Prompt + maxTokens;
        engine = new InferenceEngine(model, new EngineOptions
        {
            MaxRunningSequences = sequences,
            MaxBatchTokens = 512,
            MaxSequenceLength = length,
            KvBlocks = (sequences * ((length + 15) / 16)) + 2,
        });
        for (int k = 0; k < adapters; k++)
        {
            engine.Adapters.Load(Name(k), Path.Combine(folder, Name(k)));
        }

        for (int i = 0; i < sequences; i++)
        {
            Submit();
        }

        // Prefill: step until a step computes one row per sequence (every sequence decoding).
        long rows, tokens;
        do
        {
            (rows, tokens) = (engine.Stats.RowsComputed, engine.Stats.TokensGenerated);
            engine.Step();
        }
        while (engine.Stats.RowsComputed - rows != sequences || engine.Stats.TokensGenerated - tokens != sequences);
    }

    [Benchmark]
    public int DecodeStep()
    {
        while (engine.RunningCount + engine.WaitingCount < sequences)
        {
            Submit();
        }

        engine.Step();
        return engine.RunningCount;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        engine.Dispose();
        Directory.Delete(folder, recursive: true);
    }

    private static int Rows(string batch) => batch == "OneSequence" ? 1 : 64;

    private static string Name(int k) => $"adapter{k:D2}";

    /// <summary>Weights of the linear layers and lm_head of the 125M config.</summary>
    private static double BaseWeights()
    {
        var c = LlamaConfig.Llama125M();
        return c.ParameterCount() - ((double)c.VocabSize * c.HiddenSize) - (((2.0 * c.NumHiddenLayers) + 1) * c.HiddenSize);
    }

    /// <summary>Adapter k: LoRA of rank 32 (one adapter) or RankCycle[k mod 4] on every linear layer, random B, saved in folder/name.</summary>
    private static void SaveAdapters(LlamaForCausalLM model, string folder, int count)
    {
        var peft = new PeftModel(model);
        for (int k = 0; k < count; k++)
        {
            int rank = count == 1 ? 32 : RankCycle[k % RankCycle.Length];
            peft.AddAdapter(Name(k), new LoraConfig { R = rank, LoraAlpha = 2 * rank, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed: k);
            var b = Workload.Random(1 << 20, seed: 100 + k);
            foreach (var (_, adapter) in Lora.Adapters(model, Name(k)))
            {
                var data = adapter.B.Data;
                for (int i = 0; i < data.Length; i++)
                {
                    data[i] = b[i % b.Length] * 0.02f;
                }
            }

            peft.SaveAdapter(folder, Name(k));
            peft.DeleteAdapter(Name(k));
        }
    }

    private void Submit()
    {
        var rng = new Random(submitted);
        int[] prompt = [.. Enumerable.Range(0, Prompt).Select(_ => rng.Next(32000))];
        engine.Submit(new EngineRequest(prompt, Name(submitted % adapters), new SamplingParams(MaxTokens: maxTokens)));
        submitted++;
    }
}
