// `peft federate --adapter DIR [--weight N] ... --out DIR [--exact --rank R]`: federated averaging of
// clients' PEFT LoRA adapter folders (FederatedAdapters): FedAvg of A and B separately by default, or
// with --exact the weighted mean of the updates B·A re-factorized by SVD at rank R. --weight N is a
// client's sample count, given once per --adapter in the same order, or not at all (equal weights).
// Mismatched adapters are refused before anything is written; the output is staged and moved into
// --out (OutputPaths: never inside an input; an existing non-empty folder needs --overwrite).
using System.CommandLine;
using System.Globalization;
using PeftKernels.Peft;
using PeftKernels.Training;

namespace PeftKernels.Cli;

internal static class FederateCommand
{
    public static Command Create()
    {
        var adapters = new Option<string[]>("--adapter")
        {
            Required = true,
            HelpName = "dir",
            Description = "A client's PEFT LoRA adapter folder (give two or more).",
            AllowMultipleArgumentsPerToken = false,
        };
        var weights = new Option<long[]>("--weight")
        {
            HelpName = "samples",
            Description = "A client's sample count, once per --adapter in the same order (default: equal weights).",
        };
        var exact = new Option<bool>("--exact") { Description = "Average the updates B·A (weighted) and re-factorize them by SVD at --rank, instead of averaging A and B separately." };
        var rank = new Option<int?>("--rank") { HelpName = "r", Description = "With --exact: the rank of the result (the sum of the clients' ranks keeps the mean update exactly)." };
        var output = new Option<string>("--out") { Required = true, HelpName = "dir", Description = "Output adapter folder." };
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command("federate", "Federated averaging of clients' LoRA adapters (FedAvg of A and B, or --exact: the mean of B·A re-factorized by SVD).")
        {
            adapters, weights, exact, rank, output, overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var folders = parse.GetRequiredValue(adapters);
            var counts = parse.GetValue(weights) ?? [];
            if (folders.Length < 2)
            {
                throw new ArgumentException($"federate needs at least two --adapter folders; got {folders.Length}.");
            }

            if (counts.Length != 0 && counts.Length != folders.Length)
            {
                throw new ArgumentException($"give one --weight per --adapter ({folders.Length}) or none; got {counts.Length}.");
            }

            if (counts.Any(c => c <= 0))
            {
                throw new ArgumentException($"--weight must be a positive sample count; got {counts.First(c => c <= 0)}.");
            }

            int? r = parse.GetValue(rank);
            bool isExact = parse.GetValue(exact);
            if (isExact != (r != null))
            {
                throw new ArgumentException(isExact ? "--exact needs --rank R (the rank of the re-factorized result)." : "--rank applies with --exact; give both or neither.");
            }

            if (r is < 1)
            {
                throw new ArgumentException($"--rank must be at least 1; got {r}.");
            }

            string outFolder = OutputPaths.Check("--out", parse.GetRequiredValue(output), OutputKind.Folder, parse.GetValue(overwrite), [.. folders.Select(f => ("--adapter", (string?)f))]);
            var clients = folders.Select((f, k) => (f, counts.Length == 0 ? 1L : counts[k])).ToList();
            int modules = 0;
            bool existed = Directory.Exists(outFolder);
            try
            {
                CheckpointFolders.Publish(outFolder, dir => modules = FederatedAdapters.Average(clients, dir, r));
            }
            catch when (!existed && Directory.Exists(outFolder))
            {
                // Refused adapters leave nothing behind.
                Directory.Delete(outFolder, recursive: true);
                throw;
            }
            long total = clients.Sum(c => c.Item2);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"averaged {folders.Length} adapters ({modules} LoRA modules; weights {string.Join(", ", clients.Select(c => c.Item2))} of {total}) "
                + $"{(isExact ? $"exactly: the mean of B·A re-factorized by SVD at rank {r}" : "by FedAvg of A and B")} into {outFolder}"));
            return 0;
        }));
        return command;
    }
}
