// Non-finite weights found while loading (LlamaForCausalLM.NonFiniteTensors, PeftModel.NonFiniteTensors)
// are printed to stderr as "warning: ..." lines by every verb that loads a model or an adapter: the
// library never writes to the console itself. A long list shows the first few tensors and a count.
using System.CommandLine;
using System.Globalization;
using PeftKernels.IO;

namespace PeftKernels.Cli;

/// <summary>Prints the non-finite tensors of a load as warning lines on the invocation's error writer.</summary>
internal static class LoadWarnings
{
    /// <summary>One "warning: ..." line per tensor, up to <see cref="ProblemList.Shown"/>, then one line counting the rest.</summary>
    internal static void Print(ParseResult parse, IReadOnlyList<NonFiniteTensor> tensors)
    {
        var error = parse.InvocationConfiguration.Error;
        foreach (var t in tensors.Take(ProblemList.Shown))
        {
            error.WriteLine($"warning: {t}");
        }

        if (tensors.Count > ProblemList.Shown)
        {
            error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"warning: … and {tensors.Count - ProblemList.Shown} more tensor(s) with NaN or infinite values"));
        }
    }
}
