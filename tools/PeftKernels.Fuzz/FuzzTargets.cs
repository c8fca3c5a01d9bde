// The fuzz targets: each takes the bytes of one input file and runs them through the parsing
// and validation code the library's loaders run on that file (the loaders read the file, check
// its size, and call the same internal Parse entry points), then uses what was loaded (encodes
// and decodes a sentence, matches module names against the targeting rules).
// Exception policy (docs/reliability.md): a bad input is refused with InvalidDataException (the
// bytes are wrong) or NotSupportedException (a valid file asks for a feature this library does
// not run); any other exception, a hang over 1 s or a crash is a bug in the reader. The same
// code runs under afl-fuzz (Program.cs) and in the test suite (FuzzCorpusTests replays the
// committed corpora under tools/fuzz/corpus/<target>/).
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Quantization;
using PeftKernels.Text;

namespace PeftKernels.Fuzz;

/// <summary>Runs one fuzz input through one reader of the library.</summary>
public static class FuzzTargets
{
    /// <summary>The safetensors header (SafeTensorsFile.Open's layout parser).</summary>
    public const string SafeTensors = "safetensors";

    /// <summary>A model's config.json (LlamaConfig.Load).</summary>
    public const string ConfigJson = "config-json";

    /// <summary>An adapter's adapter_config.json (PeftConfig.Load).</summary>
    public const string AdapterConfig = "adapter-config";

    /// <summary>The JSON quant state of a bitsandbytes 4-bit weight (Bnb4bitStateDict.FromTensors).</summary>
    public const string BnbState = "bnb-state";

    /// <summary>A byte-level BPE tokenizer.json (HfTokenizer.Load).</summary>
    public const string TokenizerJson = "tokenizer-json";

    /// <summary>A SentencePiece tokenizer.model (HfTokenizer.Load).</summary>
    public const string TokenizerModel = "tokenizer-model";

    private const string Sentence = "Hello, world! 123 ünïcödé\tand\nnew  lines <s></s>";

    private static readonly string[] ModuleNames = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"];

    /// <summary>Every target name, as run.sh and the corpus folders spell it.</summary>
    public static IReadOnlyList<string> Names { get; } = [SafeTensors, ConfigJson, AdapterConfig, BnbState, TokenizerJson, TokenizerModel];

    /// <summary>True for the exceptions a reader may refuse a bad input with.</summary>
    public static bool IsAllowed(Exception exception) => exception is InvalidDataException or NotSupportedException;

    /// <summary>Parses <paramref name="input"/> with the reader of <paramref name="target"/> and uses the result.</summary>
    public static void Run(string target, byte[] input)
    {
        switch (target)
        {
            case SafeTensors:
                ParseSafeTensors(input);
                break;
            case ConfigJson:
                LlamaConfig.Parse(input, "config.json");
                break;
            case AdapterConfig:
                UseAdapterConfig(PeftConfig.Parse(input, "adapter_config.json"));
                break;
            case BnbState:
                BnbQuantState.Parse(input, "model.safetensors: 'w.weight.quant_state.bitsandbytes__nf4'");
                break;
            case TokenizerJson:
                UseTokenizer(HfTokenizer.ParseTokenizerJson(input, "tokenizer.json"));
                break;
            case TokenizerModel:
                UseTokenizer(HfTokenizer.ParseSentencePiece(input, "tokenizer.model"));
                break;
            default:
                throw new ArgumentException($"unknown fuzz target \"{target}\"; expected one of {string.Join(", ", Names)}.", nameof(target));
        }
    }

    private static unsafe void ParseSafeTensors(byte[] input)
    {
        fixed (byte* file = input)
        {
            var (tensors, _, dataStart) = SafeTensorsFile.ParseLayout(file, input.Length, "model.safetensors");
            foreach (var tensor in tensors)
            {
                // What GetBytes hands out: the tensor's bytes must lie inside the file.
                _ = input.AsSpan(checked((int)(dataStart + tensor.Begin)), checked((int)tensor.ByteLength));
            }
        }
    }

    private static void UseAdapterConfig(PeftConfig config)
    {
        foreach (string name in ModuleNames)
        {
            if (config is LoraConfig lora)
            {
                _ = lora.IsTarget(name, name == "lm_head");
                _ = lora.RankAndAlpha(name);
            }
            else if (config is Ia3Config ia3)
            {
                _ = ia3.IsTarget(name, name == "lm_head");
                _ = ia3.IsFeedforward(name);
            }
        }
    }

    private static void UseTokenizer(ITokenizer tokenizer)
    {
        // A loaded tokenizer must be usable: a positive vocabulary that holds every id it encodes to.
        if (tokenizer.VocabSize <= 0)
        {
            throw new InvalidOperationException($"loaded a tokenizer with VocabSize {tokenizer.VocabSize}");
        }

        int[] ids = tokenizer.Encode(Sentence);
        if (ids.Any(id => id < 0 || id >= tokenizer.VocabSize))
        {
            throw new InvalidOperationException($"encoded to an id outside [0, {tokenizer.VocabSize})");
        }

        _ = tokenizer.Decode(ids);
    }
}
