// `peft generate`: text or token ids after a prompt, or a JSONL file of requests, over a Hugging Face
// model folder (LlamaForCausalLM) with optional PEFT adapters.
//   --prompt / --prompt-tokens   one sequence; prints the prompt text plus the new text, or the new ids
//   --requests FILE              every request of the file (GenerateRequests.cs) as one continuous batch;
//                                one JSON line per request, in input order
// Everything runs on the inference engine (GenerateEngine.cs: continuous batching, paged KV cache,
// per-request adapters), on the CPU or with --device cuda on the GPU (the engine's step forward, KV
// blocks and every adapter kind on the device; scheduling and sampling on the host; --integer-decode, a
// CPU kernel, is refused there, as is --kv-cache bf16). A whole-model --adapter the engine serves (InferenceEngine.Serves:
// prompt learning, bottleneck, MixLoRA, X-LoRA, on either device) runs on the engine too; any other runs
// with the library's KV-cache generation (LlamaForCausalLM.Generate, no --top-k).
// Before generating, the prompt's logits are checked for NaN/∞ (naming the row and the first
// non-finite weight of the load); a sequence the engine stops on non-finite logits exits 1 with the
// library's message. In a requests file such a request's line carries the error and the exit code is 1.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Engine;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Text;

namespace PeftKernels.Cli;

internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var adapter = ModelCommands.AdapterOption();
        var prompt = new Option<string?>("--prompt") { HelpName = "text", Description = "Prompt text, encoded with the model's tokenizer (or bytes when it has none)." };
        var promptTokens = new Option<string?>("--prompt-tokens") { HelpName = "ids", Description = "Prompt as comma-separated token ids; the output is ids too." };
        var requests = new Option<string?>("--requests")
        {
            HelpName = "file",
            Description = "JSON Lines of requests, run as one continuous batch: {\"prompt\": text | \"prompt_tokens\": [ids], \"adapter\": dir, \"max_new_tokens\", "
                + "\"temperature\", \"top_p\", \"top_k\", \"seed\", \"stop_token_ids\"}; the options below are the defaults. Prints one JSON line per request, in input order.",
        };
        var maxNew = new Option<int?>("--max-new-tokens") { HelpName = "n", Description = "Tokens to generate (required, except with --requests where it is the default)." };
        var temperature = new Option<float>("--temperature") { HelpName = "t", Description = "0 = greedy; > 0 samples from softmax(logits / t).", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { HelpName = "p", Description = "Nucleus sampling mass in (0, 1].", DefaultValueFactory = _ => 1f };
        var topK = new Option<int>("--top-k") { HelpName = "k", Description = "Sample among the k most likely tokens (0 = off, 1 = greedy).", DefaultValueFactory = _ => 0 };
        var seed = new Option<int>("--seed") { Description = "Sampler seed.", DefaultValueFactory = _ => 0 };
        var integerDecode = new Option<bool>("--integer-decode")
        {
            Description = "Decode rows over 4-bit weights take the integer GEMV (int8 activations): faster, approximate; off = the bitsandbytes-exact fp32 path.",
        };
        var kvCache = KvCacheOption.Create("Storage of the engine's KV cache: fp32 (exact), or bf16 (CPU only; half the bytes a decode step's attention reads, each key and value rounded to bf16).");
        var maxRunning = new Option<int>("--max-running") { HelpName = "n", Description = "Sequences the engine runs at once; more wait in its queue.", DefaultValueFactory = _ => 64 };
        var maxBatchTokens = new Option<int>("--max-batch-tokens") { HelpName = "n", Description = "Tokens one engine step runs at most (decode rows plus prompt chunks).", DefaultValueFactory = _ => 512 };
        var threads = OptionChecks.ThreadsOption();
        var device = ModelCommands.DeviceOption();
        var compute = ComputeOption.Create();
        var command = new Command("generate", "Generate tokens after a prompt, or for a JSONL file of requests as one continuous batch, on the inference engine "
            + "(greedy, or temperature / top-k / top-p sampling; paged KV cache; an adapter per request). "
            + "--device cuda runs the engine's forward on the GPU (no --integer-decode there).")
        {
            model, adapter, prompt, promptTokens, requests, maxNew, temperature, topP, topK, seed, integerDecode, kvCache, maxRunning, maxBatchTokens, threads, device, compute,
        };
        command.Validators.Add(result =>
        {
            bool hasRequests = result.GetValue(requests) != null;
            if ((result.GetValue(prompt) != null ? 1 : 0) + (result.GetValue(promptTokens) != null ? 1 : 0) + (hasRequests ? 1 : 0) != 1)
            {
                result.AddError("give exactly one of --prompt, --prompt-tokens and --requests.");
            }
            else if (!hasRequests && result.GetValue(maxNew) == null)
            {
                result.AddError("--max-new-tokens is required with --prompt and --prompt-tokens (with --requests it is the default of max_new_tokens).");
            }
            else if (hasRequests && result.GetValue(adapter) != null)
            {
                result.AddError("--adapter does not go with --requests: each request names its own adapter folder (\"adapter\": dir).");
            }
        });
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            string folder = parse.GetRequiredValue(model);
            int? newTokens = parse.GetValue(maxNew);
            if (newTokens < 0)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--max-new-tokens must be >= 0; got {newTokens}."));
            }

            float t = parse.InRange(temperature, 0, double.PositiveInfinity), p = parse.InRange(topP, 0, 1, minOpen: true);
            int k = parse.AtLeast(topK, 0, " (0 = off)");
            int running = parse.AtLeast(maxRunning, 1), batchTokens = parse.AtLeast(maxBatchTokens, 1);
            if (running > batchTokens)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"--max-running ({running}) must not exceed --max-batch-tokens ({batchTokens}): every running sequence decodes one token per step."));
            }

            int threadCount = parse.Threads(threads);
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            var precision = parse.Compute(compute, device);
            string? requestsFile = parse.GetValue(requests);
            if (on.IsGpu && parse.GetValue(integerDecode))
            {
                throw new ArgumentException("--integer-decode needs --device cpu: the int8 decode GEMV is a CPU kernel (the GPU engine reads 4-bit weights directly).");
            }

            var cache = parse.KvCache(kvCache);
            if (on.IsGpu && cache != KvCacheType.Float32)
            {
                throw new ArgumentException("--kv-cache bf16 needs --device cpu: the GPU engine keeps an fp32 KV cache.");
            }

            var settings = new EngineSettings(running, batchTokens, threadCount, parse.GetValue(integerDecode)) { Compute = precision, On = on, KvCache = cache };
            if (requestsFile != null)
            {
                return RunRequests(parse, log, folder, requestsFile, new RequestDefaults(newTokens, t, p, k, parse.GetValue(seed), null), settings);
            }

            if (parse.GetValue(adapter) is { } modelAdapter && ModelAdapterFolders.Recognizes(modelAdapter)
                && !InferenceEngine.Serves(modelAdapter))
            {
                // A whole-model adapter the engine does not serve: the library's KV-cache generation (no top-k).
                if (k != 0)
                {
                    throw new ArgumentException($"--top-k needs the inference engine, which does not serve the adapter in {modelAdapter} on {on}.");
                }

                return Library(parse, log, folder, modelAdapter, parse.GetValue(prompt), parse.GetValue(promptTokens), newTokens!.Value,
                    new GenerationOptions(t, p, parse.GetValue(seed)), new KernelOptions(threadCount), on);
            }

            return RunPrompt(parse, log, folder, parse.GetValue(adapter), parse.GetValue(prompt), parse.GetValue(promptTokens),
                new SamplingParams(t, p, k, parse.GetValue(seed), null, newTokens!.Value), settings);
        }));
        return command;
    }

    /// <summary>One prompt on the engine: the prompt's logits checked first (with the adapter applied), then generated.</summary>
    private static int RunPrompt(ParseResult parse, TextWriter log, string folder, string? adapter, string? text, string? promptTokens,
        SamplingParams sampling, EngineSettings settings)
    {
        var lm = LlamaForCausalLM.Load(folder);
        var nonFinite = lm.NonFiniteTensors.ToList();
        PeftModel? peft = null;
        IModelAdapter? whole = adapter != null && ModelAdapterFolders.Recognizes(adapter) ? ModelAdapterFolders.Load(lm, adapter) : null;
        if (adapter != null && whole == null)
        {
            peft = new PeftModel(lm);
            peft.LoadAdapter(adapter);
            nonFinite.AddRange(peft.NonFiniteTensors());
        }

        LoadWarnings.Print(parse, nonFinite);
        ITokenizer tokenizer;
        int[] ids;
        try
        {
            tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
            ids = text != null ? Encode(tokenizer, text) : ModelCommands.ParseTokens(promptTokens!, "--prompt-tokens");
            if (ids.Length == 0)
            {
                throw new ArgumentException("the prompt encodes to no tokens.");
            }

            int maxPositions = lm.Config.MaxPositionEmbeddings;
            if (ids.Length >= maxPositions)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"the prompt has {ids.Length} tokens; the model's max_position_embeddings is {maxPositions}, so at most {maxPositions - 1} leave room to generate."));
            }

            ModelCommands.CheckLogits(lm, ids, new KernelOptions(settings.Threads) { Compute = settings.Compute }, nonFinite);
        }
        finally
        {
            peft?.DeleteAdapter("default");
            whole?.Detach();
        }

        var request = new GenerateRequest(0, ids, text != null, adapter, sampling with { StopTokenIds = StopTokens(lm, tokenizer) });
        var result = GenerateEngine.Run(lm, [request], settings, _ => "--adapter")[0];
        if (result.Finish == FinishReason.Error)
        {
            throw new InvalidDataException(GenerateEngine.ErrorMessage(result, ModelCommands.Cause(nonFinite)));
        }

        log.WriteLine(text != null ? text + tokenizer.Decode(result.Tokens) : string.Join(",", result.Tokens));
        return 0;
    }

    /// <summary>Every request of the file as one continuous batch; one JSON line each, in input order; exit 1 when any failed.</summary>
    private static int RunRequests(ParseResult parse, TextWriter log, string folder, string file, RequestDefaults defaults, EngineSettings settings)
    {
        if (!File.Exists(file))
        {
            throw new FileNotFoundException($"--requests: {file} does not exist.", file);
        }

        var lm = LlamaForCausalLM.Load(folder);
        LoadWarnings.Print(parse, lm.NonFiniteTensors);
        var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
        var requests = GenerateRequests.Read(file, defaults with { StopTokenIds = StopTokens(lm, tokenizer) }, s => Encode(tokenizer, s),
            lm.Config.VocabSize, lm.Config.MaxPositionEmbeddings);
        var adapters = GenerateEngine.CheckAdapters(lm, requests, r => $"{file}: line {r.Line}: adapter");
        LoadWarnings.Print(parse, adapters);
        var results = GenerateEngine.Run(lm, requests, settings, r => $"{file}: line {r.Line}: adapter");
        string cause = ModelCommands.Cause([.. lm.NonFiniteTensors, .. adapters]);
        for (int i = 0; i < results.Count; i++)
        {
            log.WriteLine(GenerateEngine.OutputLine(i, requests[i], results[i], tokenizer, cause));
        }

        var failed = Enumerable.Range(0, results.Count).Where(i => results[i].Finish == FinishReason.Error).ToList();
        if (failed.Count > 0)
        {
            int first = failed[0];
            string message = GenerateEngine.ErrorMessage(results[first], cause);
            parse.InvocationConfiguration.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"error: {failed.Count} of {results.Count} requests failed; the first, index {first} (line {requests[first].Line}): {message}"));
            return 1;
        }

        return 0;
    }

    /// <summary>One prompt with the library's KV-cache generation on <paramref name="on"/> (a whole-model adapter the engine does not serve there).</summary>
    private static int Library(ParseResult parse, TextWriter log, string folder, string? adapter, string? text, string? promptTokens, int newTokens,
        GenerationOptions options, KernelOptions kernel, Device on)
    {
        var (lm, nonFinite) = ModelCommands.LoadModel(parse, folder, adapter);
        lm.To(on);
        var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
        int[] ids = text != null ? Encode(tokenizer, text) : ModelCommands.ParseTokens(promptTokens!, "--prompt-tokens");
        if (ids.Length == 0)
        {
            throw new ArgumentException("the prompt encodes to no tokens.");
        }

        ModelCommands.CheckLogits(lm, ids, kernel, nonFinite);
        int[] generated;
        try
        {
            generated = lm.Generate(ids, newTokens, options with { StopTokens = StopTokens(lm, tokenizer) }, new ForwardContext(0, kernel));
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{e.Message}; {ModelCommands.Cause(nonFinite)}.", e);
        }

        log.WriteLine(text != null ? text + tokenizer.Decode(generated) : string.Join(",", generated));
        return 0;
    }

    /// <summary>Prompt text as ids: BOS (when the tokenizer has one), then the encoded text.</summary>
    private static int[] Encode(ITokenizer tokenizer, string text) => [.. (tokenizer.BosId is int bos ? [bos] : Array.Empty<int>()), .. tokenizer.Encode(text)];

    /// <summary>The model's EOS ids (config.json's eos_token_id, else the tokenizer's), the default stop tokens.</summary>
    private static int[]? StopTokens(LlamaForCausalLM lm, ITokenizer tokenizer) => lm.Config.EosTokenId ?? (tokenizer.EosId is int eos ? [eos] : null);
}
