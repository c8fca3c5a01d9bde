// Settings of `peft serve` (PeftServer): where the model and adapters are, where to listen, engine and
// adapter-memory limits, request limits and the shutdown grace period.
namespace PeftKernels.Server;

/// <summary>Settings of a <see cref="PeftServer"/>.</summary>
public sealed record ServeOptions
{
    /// <summary>The Hugging Face model folder (config.json, model.safetensors, tokenizer files).</summary>
    public required string ModelFolder { get; init; }

    /// <summary>The base model's name in <c>model</c> and <c>/v1/models</c>; null = the model folder's name.</summary>
    public string? ModelName { get; init; }

    /// <summary>Adapters loaded at start (<c>--adapter NAME=DIR</c>), name → PEFT adapter folder.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Adapters { get; init; } = [];

    /// <summary>
    /// The adapters directory (<c>--adapters-dir</c>): every sub-folder holding adapter_config.json is served under its folder name
    /// (loaded on first use), and <c>/v1/load_lora_adapter</c> paths must lie inside it (null: runtime loading is refused).
    /// </summary>
    public string? AdaptersDir { get; init; }

    /// <summary>The address to listen on.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>The port (0 = a free port, reported by <see cref="PeftServer.Url"/>).</summary>
    public int Port { get; init; } = 8000;

    /// <summary>Kernel threads (0 = all cores).</summary>
    public int Threads { get; init; }

    /// <summary>Adapter versions resident at once at most (0 = unlimited); least recently used ones are evicted.</summary>
    public int MaxLoadedAdapters { get; init; }

    /// <summary>Bytes of adapter factors resident at once at most (0 = unlimited).</summary>
    public long AdapterMemoryBytes { get; init; }

    /// <summary>Sequences the engine runs at once; more wait in its queue.</summary>
    public int MaxRunningSequences { get; init; } = 64;

    /// <summary>Tokens one engine step runs at most.</summary>
    public int MaxBatchTokens { get; init; } = 512;

    /// <summary>Positions per sequence (prompt plus generated) at most; 0 = the model's max_position_embeddings.</summary>
    public int MaxContextLength { get; init; }

    /// <summary>Requests waiting in the engine's queue at most; beyond it requests are answered 429.</summary>
    public int MaxQueuedRequests { get; init; } = 256;

    /// <summary>Largest request body in bytes (413 beyond it).</summary>
    public long MaxRequestBodyBytes { get; init; } = 4 << 20;

    /// <summary>How long a stop waits for running requests to finish before cancelling them.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The API-key file (<c>--api-keys</c>), for the request gate that authenticates and scopes requests. The server itself does not read it:
    /// whoever builds the server turns it into the <see cref="IRequestGate"/> passed to <see cref="PeftServer"/>.
    /// </summary>
    public string? ApiKeysFile { get; init; }

    /// <summary>
    /// Where the model lives and the engine's step forward runs (<c>--device</c>): null or the CPU, or a GPU device, where the KV cache,
    /// the base GEMMs and every adapter kind (LoRA, DoRA, IA³, prompt learning, bottleneck, MixLoRA, X-LoRA) run on the device.
    /// </summary>
    public Device? Device { get; init; }
}
