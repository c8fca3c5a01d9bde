// The engine side of `peft generate`: one InferenceEngine over the base model (moved to the GPU first with
// --device cuda, where the engine's step forward runs), sized to
// the job (running sequences at most the request count, KV pool for the longest prompt plus its new
// tokens), each distinct adapter folder loaded once into engine.Adapters, every request run as one
// continuous batch (engine.Run: results in input order). A sequence the engine finished with an
// error keeps its message; non-finite logits are reworded as the library's Generate words them
// (generation step and sequence position) with what the load found about the weights.
using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using PeftKernels.Engine;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;

namespace PeftKernels.Cli;

/// <summary>The engine settings the command line gives.</summary>
internal sealed record EngineSettings(int MaxRunning, int MaxBatchTokens, int Threads, bool IntegerDecode)
{
    /// <summary>Precision of the matrix products (--compute).</summary>
    public ComputePrecision Compute { get; init; }

    /// <summary>Where the engine's forward runs (--device); the model is moved there before the engine is built.</summary>
    public Device On { get; init; } = Device.Cpu;

    /// <summary>Storage of the engine's KV cache (--kv-cache fp32|bf16).</summary>
    public KvCacheType KvCache { get; init; }
}

/// <summary>Runs checked requests on an <see cref="InferenceEngine"/> and words its results.</summary>
internal static class GenerateEngine
{
    private const string NonFiniteMarker = "the logits are not finite: ";

    /// <summary>
    /// Loads every distinct adapter folder of <paramref name="requests"/> as a PEFT adapter once, so that a bad folder is
    /// refused before anything runs (naming the first request's line that names it); returns their non-finite tensors.
    /// </summary>
    internal static List<NonFiniteTensor> CheckAdapters(LlamaForCausalLM lm, IReadOnlyList<GenerateRequest> requests, Func<GenerateRequest, string> label)
    {
        var nonFinite = new List<NonFiniteTensor>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var r in requests)
        {
            if (r.AdapterFolder != null && seen.Add(r.AdapterFolder))
            {
                try
                {
                    nonFinite.AddRange(CheckAdapter(lm, r.AdapterFolder));
                }
                catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException or NotSupportedException or InvalidOperationException or UnauthorizedAccessException)
                {
                    throw new InvalidDataException($"{label(r)}: {e.Message}", e);
                }
            }
        }

        return nonFinite;
    }

    /// <summary>Runs all requests as one continuous batch, each distinct adapter folder loaded once into the engine; results in input order.</summary>
    internal static IReadOnlyList<EngineResult> Run(LlamaForCausalLM lm, IReadOnlyList<GenerateRequest> requests, EngineSettings settings, Func<GenerateRequest, string> label)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var folder in requests.Select(r => r.AdapterFolder).OfType<string>())
        {
            names.TryAdd(folder, string.Create(CultureInfo.InvariantCulture, $"adapter{names.Count}"));
        }

        int longest = requests.Max(r => PromptLearningCommands.VirtualTokens(r.AdapterFolder) + r.Prompt.Length + Math.Max(r.Sampling.MaxTokens, 1));
        var options = new EngineOptions
        {
            MaxBatchTokens = settings.MaxBatchTokens,
            MaxRunningSequences = Math.Min(settings.MaxRunning, requests.Count),
            MaxSequenceLength = Math.Min(lm.Config.MaxPositionEmbeddings, longest),
            Threads = settings.Threads,
            Compute = settings.Compute,
            IntegerDecode = settings.IntegerDecode,
            KvCache = settings.KvCache,
        };
        if (settings.On.IsGpu)
        {
            lm.To(settings.On);
        }

        using var engine = new InferenceEngine(lm, options);
        foreach (var (folder, name) in names)
        {
            try
            {
                engine.Adapters.Load(name, folder);
            }
            catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException or NotSupportedException or InvalidOperationException or UnauthorizedAccessException)
            {
                throw new InvalidDataException($"{label(requests.First(r => r.AdapterFolder == folder))}: {e.Message}", e);
            }
        }

        return engine.Run([.. requests.Select(r => new EngineRequest(r.Prompt, r.AdapterFolder == null ? null : names[r.AdapterFolder], r.Sampling))]);
    }

    /// <summary>
    /// Loads <paramref name="folder"/> onto <paramref name="lm"/> as a PEFT adapter, runs <paramref name="whileLoaded"/> with it
    /// active, and removes it again (the engine serves adapters from its own registry, over the base weights); returns the
    /// adapter's non-finite tensors.
    /// </summary>
    internal static IReadOnlyList<NonFiniteTensor> CheckAdapter(LlamaForCausalLM lm, string folder, Action<IReadOnlyList<NonFiniteTensor>>? whileLoaded = null)
    {
        if (PromptLearningFiles.Recognizes(folder))
        {
            return PromptLearningCommands.CheckAdapter(lm, folder, whileLoaded);
        }

        if (Peft.Bottleneck.BottleneckAdapters.IsBottleneckFolder(folder))
        {
            // Strict load onto a twin sharing the base (the engine refuses non-finite bottleneck values when it loads them).
            Peft.Bottleneck.BottleneckAdapters.Load(lm.ShareBaseParameters(), folder);
            return [];
        }

        if (MixLoraAdapter.Recognizes(folder))
        {
            // Strict load onto a twin sharing the base (the engine refuses non-finite MixLoRA values when it loads them).
            MixLoraAdapter.Load(lm.ShareBaseParameters(), folder);
            return [];
        }

        if (Peft.XLora.XLoraModel.Recognizes(folder))
        {
            // Strict load onto a twin sharing the base (the engine refuses non-finite X-LoRA values when it loads them).
            Peft.XLora.XLoraModel.Load(lm.ShareBaseParameters(), folder);
            return [];
        }

        var peft = new PeftModel(lm);
        peft.LoadAdapter(folder);
        try
        {
            var found = peft.NonFiniteTensors();
            whileLoaded?.Invoke(found);
            return found;
        }
        finally
        {
            peft.DeleteAdapter("default");
        }
    }

    /// <summary>
    /// The message of a result the engine finished with an error: non-finite logits as the library's Generate words them
    /// (the generation step and sequence position), with <paramref name="cause"/>; any other error as the engine gave it.
    /// </summary>
    internal static string ErrorMessage(EngineResult result, string cause)
    {
        string error = result.Error ?? "the engine stopped the sequence with an error";
        int at = error.IndexOf(NonFiniteMarker, StringComparison.Ordinal);
        if (at < 0)
        {
            return error;
        }

        int step = result.Tokens.Length + 1;
        return string.Create(CultureInfo.InvariantCulture,
            $"the logits are not finite at generation step {step} (sequence position {result.PromptTokens + step - 2}): {error[(at + NonFiniteMarker.Length)..]}; {cause}.");
    }

    /// <summary>The finish reason as the output spells it (OpenAI's and vLLM's names).</summary>
    internal static string Reason(FinishReason finish) => finish switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        FinishReason.Error => "error",
        FinishReason.Cancelled => "cancelled",
        _ => "none",
    };

    /// <summary>One output line: index, prompt length, new tokens, the decoded text (text prompts), finish reason, cached prompt tokens, error.</summary>
    internal static string OutputLine(int index, GenerateRequest request, EngineResult result, ITokenizer tokenizer, string cause)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteNumber("index", index);
            json.WriteNumber("prompt_tokens", result.PromptTokens);
            json.WriteStartArray("tokens");
            foreach (int t in result.Tokens)
            {
                json.WriteNumberValue(t);
            }

            json.WriteEndArray();
            if (request.TextPrompt)
            {
                json.WriteString("text", tokenizer.Decode(result.Tokens));
            }

            json.WriteString("finish_reason", Reason(result.Finish));
            json.WriteNumber("cached_prompt_tokens", result.CachedPromptTokens);
            if (result.Finish == FinishReason.Error)
            {
                json.WriteString("error", ErrorMessage(result, cause));
            }

            json.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
