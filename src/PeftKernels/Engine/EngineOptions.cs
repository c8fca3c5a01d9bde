// Settings of the inference engine (InferenceEngine): how many tokens one step may run (the token
// budget shared by decode rows and prompt chunks), how many sequences run at once, the paged KV cache's
// block size and size, threads, and whether decode rows over a 4-bit base take the integer GEMV.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Engine;

/// <summary>How the paged KV cache stores keys and values.</summary>
public enum KvCacheType
{
    /// <summary>fp32 (exact; the default).</summary>
    Float32,

    /// <summary>
    /// bf16 bit patterns, each element rounded to nearest-even when written and widened exactly when read: half the bytes a decode
    /// step's attention streams (CPU only; the error and the greedy agreement are in docs/performance.md, session 14).
    /// </summary>
    BFloat16,
}

/// <summary>Settings of <see cref="InferenceEngine"/>.</summary>
public sealed record EngineOptions
{
    /// <summary>Tokens one step runs at most: one per decoding sequence plus prompt chunks (vLLM's max_num_batched_tokens).</summary>
    public int MaxBatchTokens { get; init; } = 512;

    /// <summary>Sequences in the running batch at most (vLLM's max_num_seqs); more wait in the queue.</summary>
    public int MaxRunningSequences { get; init; } = 64;

    /// <summary>Positions per KV block.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>
    /// Blocks in the KV pool; 0 = enough for <see cref="MaxRunningSequences"/> sequences of <see cref="MaxSequenceLength"/> positions,
    /// capped at 1 GiB of keys and values (but never below one full-length sequence): beyond that, sequences are preempted and recomputed.
    /// </summary>
    public int KvBlocks { get; init; }

    /// <summary>Positions per sequence at most (prompt plus generated); 0 = the model's max_position_embeddings.</summary>
    public int MaxSequenceLength { get; init; }

    /// <summary>Threads of the kernels (0 = all cores).</summary>
    public int Threads { get; init; }

    /// <summary>SIMD path of the kernels (Auto = the widest the CPU has).</summary>
    public SimdPath Path { get; init; } = SimdPath.Auto;

    /// <summary>Precision of the matrix products (fp32, or bf16 operands with fp32 sums; decode rows stay fp32).</summary>
    public ComputePrecision Compute { get; init; }

    /// <summary>
    /// Decode rows over 4-bit weights use the integer GEMV (activations quantized per 32 elements to int8, codes through an
    /// int8 table): faster, approximate (see docs/performance.md for its logit error). Off: the bitsandbytes-exact fp32 path.
    /// </summary>
    public bool IntegerDecode { get; init; }

    /// <summary>Storage of the paged KV cache (fp32, or bf16 on the CPU engine).</summary>
    public KvCacheType KvCache { get; init; }

    /// <summary>Sequences whose prompts start alike share the KV blocks of the common full blocks (copy on write).</summary>
    public bool PrefixSharing { get; init; } = true;

    /// <summary>
    /// With <see cref="IntegerDecode"/>: the integer GEMV's row kernel (Auto: the native AVX512-VNNI rows where the CPU and
    /// libpeftnative.so have them; Managed forces the managed rows). Both give the same bits.
    /// </summary>
    public Int8Kernel Int8Kernel { get; init; }

    /// <summary>The kernel options these settings give.</summary>
    internal KernelOptions Kernel => new(Threads, Path) { Compute = Compute, Int8Kernel = Int8Kernel };

    /// <summary>Checks every setting against the model's limits.</summary>
    /// <exception cref="ArgumentException">A setting is out of range (the setting and value are named).</exception>
    internal void Validate(int maxPositions)
    {
        void Require(bool ok, string what)
        {
            if (!ok)
            {
                throw new ArgumentException($"EngineOptions: {what}.");
            }
        }

        Require(MaxBatchTokens > 0, $"MaxBatchTokens must be positive; got {MaxBatchTokens}");
        Require(MaxRunningSequences > 0, $"MaxRunningSequences must be positive; got {MaxRunningSequences}");
        Require(MaxRunningSequences <= MaxBatchTokens, $"MaxRunningSequences ({MaxRunningSequences}) must not exceed MaxBatchTokens ({MaxBatchTokens}): every running sequence decodes one token per step");
        Require(BlockSize > 0, $"BlockSize must be positive; got {BlockSize}");
        Require(KvBlocks >= 0, $"KvBlocks must be >= 0; got {KvBlocks}");
        Require(MaxSequenceLength >= 0 && MaxSequenceLength <= maxPositions, $"MaxSequenceLength must be in [0, {maxPositions}] (the model's max_position_embeddings); got {MaxSequenceLength}");
        Require(Threads >= 0, $"Threads must be >= 0; got {Threads}");
        Require(KvCache is KvCacheType.Float32 or KvCacheType.BFloat16, $"KvCache must be Float32 or BFloat16; got {KvCache}");
    }
}
