// `--kv-cache fp32|bf16` of peft generate and peft bench serve: the storage of the engine's KV cache
// (EngineOptions.KvCache). bf16 halves the bytes a decode step's attention reads, each key and value
// rounded to bf16; the CPU engine only.
using System.CommandLine;
using PeftKernels.Engine;

namespace PeftKernels.Cli;

internal static class KvCacheOption
{
    internal static Option<string> Create(string description)
    {
        var option = new Option<string>("--kv-cache") { HelpName = "fp32|bf16", Description = description, DefaultValueFactory = _ => "fp32" };
        option.AcceptOnlyFromAmong("fp32", "bf16");
        return option;
    }

    /// <summary>The cache type a parsed `--kv-cache` names.</summary>
    internal static KvCacheType KvCache(this ParseResult parse, Option<string> option) =>
        parse.GetValue(option) == "bf16" ? KvCacheType.BFloat16 : KvCacheType.Float32;
}
