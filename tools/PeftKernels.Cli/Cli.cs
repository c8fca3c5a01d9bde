// The `peft` command tree, built in one place so that Program.cs and the tests invoke the same
// commands, and the error path every verb shares: an expected failure (bad input file, bad
// option value, I/O error) prints one "error: ..." line to stderr and exits 1, no stack trace.
using System.CommandLine;
using System.Text.RegularExpressions;

namespace PeftKernels.Cli;

/// <summary>Builds the root command of the `peft` tool.</summary>
public static class Cli
{
    /// <summary>The root command with every verb.</summary>
    public static RootCommand Build()
    {
        var root = new RootCommand("peft: parameter-efficient fine-tuning kernels and tools for .NET");
        root.Subcommands.Add(Demo.DemoCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(QuantizeCommands.CreateQuantize());
        root.Subcommands.Add(QuantizeCommands.CreateDequantize());
        root.Subcommands.Add(ModelCommands.CreateScore());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(PretrainCommand.Create());
        root.Subcommands.Add(MergeCommand.Create());
        root.Subcommands.Add(FederateCommand.Create());
        root.Subcommands.Add(AdapterCommands.CreateAdapters());
        root.Subcommands.Add(ServeCommand.Create());
        return root;
    }

    /// <summary>Runs <paramref name="body"/> with the invocation's output; expected failures become one error line and exit code 1.</summary>
    internal static int Guard(ParseResult parse, Func<TextWriter, int> body)
    {
        try
        {
            return body(parse.InvocationConfiguration.Output);
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException or IOException or UnauthorizedAccessException
            or NotSupportedException or KeyNotFoundException or RegexMatchTimeoutException or Training.TrainingDivergedException)
        {
            string message = string.Join(' ', e.Message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries));
            string parameter = e is ArgumentException { ParamName: { } name } ? $" (Parameter '{name}')" : "";
            if (parameter.Length > 0 && message.EndsWith(parameter, StringComparison.Ordinal))
            {
                message = message[..^parameter.Length];
            }

            parse.InvocationConfiguration.Error.WriteLine($"error: {message}");
            return 1;
        }
    }
}
