// `peft generate --prompt/--prompt-tokens --adapter DIR` when DIR holds a whole-model adapter
// (IModelAdapter: MixLoRA, ...) that the engine does not serve: the adapter is attached through
// ModelAdapterFolders and the library's LlamaForCausalLM.Generate decodes with the KV cache
// (temperature and top-p sampling; --top-k needs the engine).
using System.CommandLine;
using System.Globalization;
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Text;

namespace PeftKernels.Cli;

internal static class GenerateModelAdapter
{
    /// <summary>True when <paramref name="adapter"/> names a whole-model adapter folder.</summary>
    public static bool Applies(string? adapter) => adapter != null && ModelAdapterFolders.Recognizes(adapter);

    /// <summary>Generates from one prompt with the adapter attached; prints like the engine path.</summary>
    public static int Run(ParseResult parse, TextWriter log, string folder, string adapter, string? text, string? promptTokens, SamplingParams sampling, int threads)
    {
        if (sampling.TopK > 1)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"--top-k {sampling.TopK} needs the engine, which does not serve the adapter in {adapter}; use --temperature and --top-p."));
        }

        var lm = LlamaForCausalLM.Load(folder);
        LoadWarnings.Print(parse, lm.NonFiniteTensors);
        var attached = ModelAdapterFolders.Load(lm, adapter);
        var tokenizer = HfTokenizer.ForModel(folder, lm.Config.VocabSize);
        int[] ids = text != null
            ? [.. (tokenizer.BosId is int bos ? [bos] : Array.Empty<int>()), .. tokenizer.Encode(text)]
            : ModelCommands.ParseTokens(promptTokens!, "--prompt-tokens");
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

        var stop = lm.Config.EosTokenId ?? (tokenizer.EosId is int eos ? [eos] : null);
        var generated = lm.Generate(ids, sampling.MaxTokens, new GenerationOptions(sampling.Temperature, sampling.TopP, sampling.Seed ?? 0, stop),
            new ForwardContext(0, new KernelOptions(threads)));
        parse.InvocationConfiguration.Error.WriteLine($"note: {attached.Method} adapter {adapter} decoded by the library (the engine does not serve it).");
        log.WriteLine(text != null ? text + tokenizer.Decode(generated) : string.Join(",", generated));
        return 0;
    }
}
