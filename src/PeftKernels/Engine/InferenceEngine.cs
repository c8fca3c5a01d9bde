// The inference engine: continuous batching over one base model with many adapters (S-LoRA/vLLM
// style). Requests are submitted from any thread; each Step (on one thread at a time):
//   1. takes new requests into the queue and drops cancelled sequences;
//   2. plans the step under the token budget (EngineOptions.MaxBatchTokens): one row for every running
//      sequence that is decoding, then the next prompt chunk of running sequences still in their prompt,
//      then new sequences from the queue (while fewer than MaxRunningSequences run) — so prompts are
//      prefilled in chunks mixed with decode steps and sequences join and leave at every step;
//   3. reserves each row's position in the paged KV cache; when the pool is out of blocks, the newest
//      running sequence not yet planned is preempted (blocks freed, recomputed later), itself last;
//   4. runs the batched forward (BatchForward: each row with its sequence's adapter; on a model on a GPU
//      device, DeviceBatchForward runs it there, with the KV blocks in device memory, while planning,
//      block accounting and sampling stay on the host);
//   5. samples the next token of every sequence whose last row produced logits (its own sampler and
//      seed, so its tokens do not depend on the batch), and finishes sequences at a stop token, at
//      their max tokens or at the maximum sequence length (blocks freed, adapter lease released).
// A new sequence first takes the longest run of full KV blocks another sequence already holds for the
// same prompt start (prefix sharing, copy on write), then computes the rest. An X-LoRA sequence holds a
// second cache for its scaling pass, run before the step's forward (InferenceEngine.XLora.cs).
using System.Collections.Concurrent;
using System.Globalization;
using PeftKernels.Models;

namespace PeftKernels.Engine;

/// <summary>Receives a sequence's logits [vocab] of one step (valid during the call only).</summary>
internal delegate void LogitsObserver(EngineSequence sequence, ReadOnlySpan<float> logits);

/// <summary>Continuous-batching generation over one base model and many adapters, with a paged KV cache.</summary>
public sealed partial class InferenceEngine : IDisposable
{
    private readonly LlamaForCausalLM model;
    private readonly BatchForward? forward;
    private readonly DeviceBatchForward? deviceForward;
    private readonly StepBatch batch;
    private readonly StepBatch scalingBatch;
    private readonly ConcurrentQueue<EngineSequence> incoming = new();
    private readonly LinkedList<EngineSequence> waiting = new();
    private readonly List<EngineSequence> running = [];
    private readonly List<EngineSequence> planned = [];
    private readonly Lock stepGate = new();
    private readonly SemaphoreSlim work = new(0);
    private long nextId;
    private bool disposed;

    /// <summary>
    /// An engine over <paramref name="model"/>, with its own adapter registry unless one is given. When the model is on a GPU device
    /// the step's forward runs there (DeviceBatchForward, the KV blocks in device memory); scheduling and sampling stay on the host.
    /// </summary>
    /// <exception cref="NotSupportedException">The model stores a weight the engine cannot serve, or has a head size the device kernels do not take.</exception>
    /// <exception cref="ArgumentException">An option is out of range.</exception>
    public InferenceEngine(LlamaForCausalLM model, EngineOptions? options = null, AdapterRegistry? registry = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        RefuseXLora(model);
        this.model = model;
        Options = options ?? new EngineOptions();
        Options.Validate(model.Config.MaxPositionEmbeddings);
        MaxSequenceLength = Options.MaxSequenceLength > 0 ? Options.MaxSequenceLength : model.Config.MaxPositionEmbeddings;
        var c = model.Config;
        int blocks = Options.KvBlocks > 0 ? Options.KvBlocks : DefaultBlocks(c, Options, MaxSequenceLength);
        Adapters = registry ?? new AdapterRegistry(model);
        batch = new StepBatch(Options.MaxBatchTokens, Options.MaxRunningSequences);
        scalingBatch = new StepBatch(Options.MaxBatchTokens, Options.MaxRunningSequences);
        if (model.Device.IsGpu)
        {
            if (Options.KvCache != KvCacheType.Float32)
            {
                throw new NotSupportedException($"EngineOptions.KvCache {Options.KvCache} is CPU-only; the device engine keeps an fp32 KV cache.");
            }

            Pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, Options.BlockSize, blocks, model.Device.Accelerator);
            try
            {
                deviceForward = new DeviceBatchForward(model, Pool, Options.MaxBatchTokens, Options.MaxRunningSequences, MaxSequenceLength);
            }
            catch
            {
                Pool.Device?.Dispose();
                throw;
            }

            table = new AdapterTable(c.NumHiddenLayers, deviceForward.Shapes);
            return;
        }

        Pool = new KvBlockPool(c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, Options.BlockSize, blocks, Options.KvCache);
        forward = new BatchForward(model, Options.MaxBatchTokens, Options.MaxRunningSequences, MaxSequenceLength, Options);
        table = new AdapterTable(c.NumHiddenLayers, forward.Shapes);
    }

    /// <summary>Where the step's forward runs: the CPU, or the model's GPU device.</summary>
    public Device Device => model.Device;

    /// <summary>The device forward (null on the CPU), for tests: its buffer growths and adapter uploads.</summary>
    internal DeviceBatchForward? DeviceForward => deviceForward;

    /// <summary>The settings.</summary>
    public EngineOptions Options { get; }

    /// <summary>The adapters requests may name.</summary>
    public AdapterRegistry Adapters { get; }

    /// <summary>The paged KV cache.</summary>
    public KvBlockPool Pool { get; }

    /// <summary>Positions per sequence at most.</summary>
    public int MaxSequenceLength { get; }

    /// <summary>Called on the stepping thread with each sequence's logits before its next token is sampled (tests compare them with the library's).</summary>
    internal LogitsObserver? ObserveLogits { get; set; }

    /// <summary>Counters since creation.</summary>
    public EngineStats Stats { get; } = new();

    /// <summary>Sequences running now.</summary>
    public int RunningCount => running.Count;

    /// <summary>Sequences waiting (queued or preempted).</summary>
    public int WaitingCount => waiting.Count + incoming.Count;

    /// <summary>True when nothing is queued or running.</summary>
    public bool IsIdle => running.Count == 0 && waiting.Count == 0 && incoming.IsEmpty;

    /// <summary>Queues a request (thread-safe); it runs in the next steps.</summary>
    /// <exception cref="ArgumentException">The prompt is empty, holds an id outside the vocabulary, or leaves no room to generate; a sampling setting is invalid.</exception>
    /// <exception cref="KeyNotFoundException">The adapter is not known to <see cref="Adapters"/>.</exception>
    public EngineSequence Submit(EngineRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(disposed, this);
        var prompt = request.PromptTokens ?? throw new ArgumentException("the request has no prompt tokens.", nameof(request));
        if (prompt.Length == 0)
        {
            throw new ArgumentException("the prompt is empty; give at least one token (e.g. BOS).", nameof(request));
        }

        for (int i = 0; i < prompt.Length; i++)
        {
            if ((uint)prompt[i] >= (uint)model.Config.VocabSize)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"prompt token id {prompt[i]} at position {i} is outside the vocabulary [0, {model.Config.VocabSize})."), nameof(request));
            }
        }

        if (prompt.Length >= MaxSequenceLength)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"the prompt has {prompt.Length} tokens; the engine's maximum sequence length is {MaxSequenceLength}, leaving no room to generate."), nameof(request));
        }

        var sampling = request.Sampling ?? new SamplingParams();
        sampling.Validate();
        if (request.Adapter != null && !Adapters.Names.Contains(request.Adapter, StringComparer.Ordinal))
        {
            throw new KeyNotFoundException($"adapter '{request.Adapter}' is not known; known adapters: {string.Join(", ", Adapters.Names.Select(n => $"'{n}'"))}.");
        }

        var sequence = new EngineSequence(Interlocked.Increment(ref nextId) - 1, request, sampling);
        incoming.Enqueue(sequence);
        work.Release();
        return sequence;
    }

    /// <summary>Runs requests as one continuous batch until all finish; results in the order given.</summary>
    public IReadOnlyList<EngineResult> Run(IEnumerable<EngineRequest> requests)
    {
        var sequences = requests.Select(Submit).ToList();
        RunUntilIdle();
        return [.. sequences.Select(s => s.Result!)];
    }

    /// <summary>Steps until nothing is queued or running.</summary>
    public void RunUntilIdle()
    {
        while (!IsIdle)
        {
            Step();
        }
    }

    /// <summary>Steps whenever there is work, until <paramref name="cancellationToken"/> is cancelled (a server's loop).</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            if (IsIdle)
            {
                try
                {
                    await work.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }

            Step();
        }
    }

    /// <summary>Frees the KV pool's users: every queued or running sequence finishes as cancelled.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }

        lock (stepGate)
        {
            disposed = true;
            while (incoming.TryDequeue(out var s))
            {
                waiting.AddLast(s);
            }

            foreach (var s in running.Concat(waiting).ToList())
            {
                Finish(s, FinishReason.Cancelled);
            }

            running.Clear();
            waiting.Clear();
            deviceForward?.Dispose();
            Pool.Device?.Dispose();
        }

        work.Dispose();
    }

    private static int DefaultBlocks(LlamaConfig c, EngineOptions o, int maxLength)
    {
        // Enough for every running sequence at full length, capped at 1 GiB of K/V but never below one full-length sequence.
        long perBlock = 2L * c.NumHiddenLayers * o.BlockSize * c.NumKeyValueHeads * c.HeadDim * sizeof(float);
        long perSequence = (maxLength + o.BlockSize - 1) / o.BlockSize;
        long want = perSequence * o.MaxRunningSequences;
        long cap = Math.Max(perSequence + 1, (1L << 30) / perBlock);
        return (int)Math.Min(want + 1, cap);
    }

    private void Finish(EngineSequence s, FinishReason reason, string? error = null)
    {
        // Counted first: another thread that sees the blocks freed or the sequence completed also sees it counted.
        Stats.Finished++;
        ReleaseCaches(s);
        s.AdapterLease?.Dispose();
        s.AdapterLease = null;
        s.Complete(reason, error);
    }
}
