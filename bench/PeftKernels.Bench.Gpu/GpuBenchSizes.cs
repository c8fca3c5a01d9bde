// The problem sizes of the GPU benchmarks. Full is what the GPU runner measures on a CUDA GPU (the
// issues' shapes: 4096³ GEMM, 8192² NF4, the ~125M Llama, 64 adapters). Small is for the runner's
// --cpu-accelerator mode, where ILGPU simulates every GPU thread on the host: the same code paths
// (pool, queued ops, waits, the engine on the device) at sizes that take seconds, so a machine
// without a GPU checks that every benchmark runs; its timings say nothing about a GPU.
using PeftKernels.Models;

namespace PeftKernels.Bench.Gpu;

/// <summary>The shapes every GPU benchmark body takes.</summary>
/// <param name="Name">"full" or "small".</param>
/// <param name="Gemm">m = n = k of the square GEMM (the transposed-B GEMM is m/2 × n × k).</param>
/// <param name="Lora">n = in = out of the LoRA matmul benchmark.</param>
/// <param name="LoraRank">r of the LoRA matmul benchmark.</param>
/// <param name="Quant4">rows = cols of the NF4 dequantization and GEMV.</param>
/// <param name="Model">The Llama of the training and decode benchmarks.</param>
/// <param name="TrainSeq">Tokens per training step (batch 1).</param>
/// <param name="Prompt">Prompt tokens of the decode benchmarks.</param>
/// <param name="NewTokens">Tokens generated per sequence.</param>
/// <param name="Adapters">LoRA adapters loaded into the engine.</param>
/// <param name="Sequences">Sequences decoded together in the many-adapter batch (each with its own adapter, cycling).</param>
public sealed record GpuBenchSizes(string Name, int Gemm, int Lora, int LoraRank, int Quant4, LlamaConfig Model, int TrainSeq, int Prompt, int NewTokens,
    int Adapters, int Sequences)
{
    /// <summary>The shapes measured on a GPU.</summary>
    public static GpuBenchSizes Full { get; } = new("full", 4096, 4096, 16, 8192, LlamaConfig.Llama125M(), 256, 32, 128, 64, 64);

    /// <summary>The shapes of the --cpu-accelerator run (the code paths only; 8 sequences: a 64-row engine step takes minutes on the simulated accelerator).</summary>
    public static GpuBenchSizes Small { get; } = new("small", 128, 96, 8, 256, LlamaConfig.Tiny(64), 16, 8, 6, 64, 8);
}
