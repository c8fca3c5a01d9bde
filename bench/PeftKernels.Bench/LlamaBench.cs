// End-to-end Llama benchmarks on the ~125M config (hidden 768, 12 layers, 12 heads,
// intermediate 2048, vocab 32000), random weights (the arithmetic does not depend on values).
//   LlamaTrainStepBench: one LoRA (r = 16, all linear layers) training step at batch 1 ×
//     seq 256: forward, backward, AdamW. Model FLOPs are counted as 4 × (base parameters) ×
//     tokens (forward 2·P·T, input-gradient backward 2·P·T; frozen W has no dW), so
//     GFLOP/s ÷ the FMA peak is the model FLOP utilisation (MFU).
//   LlamaGenerateBench: one decode step at batch 1 with a KV cache holding 128 positions;
//     Bytes = the base weights read once per token.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Bench;

public class LlamaTrainStepBench : IWorkload
{
    private const int Seq = 256;
    private LlamaForCausalLM model = null!;
    private int[] inputs = [];
    private int[] labels = [];
    private Training.AdamWOptimizer optimizer = null!;

    [Params("f32", "bf16", "nf4")]
    public string Base { get; set; } = "f32";

    public double Flops(BenchmarkCase benchmarkCase) => 4.0 * LlamaConfig.Llama125M().ParameterCount() * Seq;

    public double Bytes(BenchmarkCase benchmarkCase) => 0;

    [GlobalSetup]
    public void Setup()
    {
        model = LlamaBenchModels.Create(Base);
        Lora.Apply(model, new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        optimizer = new Training.AdamWOptimizer([new Training.ParameterGroup([.. model.TrainableParameters()])]);
        var rng = new Random(1);
        inputs = [.. Enumerable.Range(0, Seq).Select(_ => rng.Next(32000))];
        labels = [.. inputs.Skip(1), 0];
    }

    [Benchmark]
    public float TrainStep()
    {
        var loss = model.Loss(inputs, labels, 1);
        loss.Backward();
        optimizer.ClipGradNorm(1.0);
        optimizer.Step(1e-4);
        optimizer.ZeroGrad();
        return loss.Item();
    }
}

public class LlamaGenerateBench : IWorkload
{
    private const int Past = 128;
    private LlamaForCausalLM model = null!;
    private KvCache cache = null!;

    [Params("f32", "bf16", "nf4")]
    public string Base { get; set; } = "f32";

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * LlamaConfig.Llama125M().ParameterCount();

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var c = LlamaConfig.Llama125M();
        double linear = c.ParameterCount() - (2.0 * c.VocabSize * c.HiddenSize);
        double head = (double)c.VocabSize * c.HiddenSize;
        return benchmarkCase.Param<string>("Base") switch
        {
            "f32" => (linear + head) * 4,
            "bf16" => (linear + head) * 2,
            // NF4 codes (½ byte) + double-quantized scales (1 byte per 64) for the Linears; embeddings and head stay bf16.
            _ => (linear * (0.5 + (1.0 / 64))) + (head * 2),
        };
    }

    [GlobalSetup]
    public void Setup()
    {
        model = LlamaBenchModels.Create(Base);
        var c = model.Config;
        cache = new KvCache(c.NumHiddenLayers, 1, Past + 64, c.NumKeyValueHeads * c.HeadDim);
        using var scope = Tape.NoGrad();
        model.Forward([.. Enumerable.Range(1, Past)], 1, cache);
    }

    [Benchmark]
    public float DecodeToken()
    {
        using var scope = Tape.NoGrad();
        if (cache.Length == cache.Capacity)
        {
            // Back to the 128-token prompt: every measured token attends over 128..191 cached positions.
            cache.Truncate(Past);
        }

        return model.Forward([42], 1, cache).Data[0];
    }
}

internal static class LlamaBenchModels
{
    /// <summary>The 125M config with random weights, stored as f32, bf16, or NF4 (double-quantized) Linears with an fp32 head.</summary>
    public static LlamaForCausalLM Create(string storage)
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Llama125M(), seed: 1);
        if (storage == "bf16")
        {
            model = model.ToStorage(WeightStorage.BFloat16);
        }
        else if (storage == "nf4")
        {
            // As a QLoRA run loads it: a bf16 checkpoint whose Linears are then quantized (embeddings and head stay bf16).
            model = model.ToStorage(WeightStorage.BFloat16);
            model.QuantizeLinears();
        }

        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);

        return model;
    }
}
