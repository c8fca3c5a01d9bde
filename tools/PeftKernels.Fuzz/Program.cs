// The afl-fuzz entry point: `dotnet PeftKernels.Fuzz.dll TARGET` reads inputs from afl-fuzz in
// persistent mode (SharpFuzz's fork server) and runs each through FuzzTargets; an exception the
// policy does not allow escapes and is reported to afl-fuzz as a crash. Without afl-fuzz it runs
// the input on standard input once. `--replay TARGET FILE|DIR...` runs files and prints each
// outcome (exit 1 when one is not allowed); `--write-seeds DIR` writes the seed inputs.
using System.Diagnostics;
using PeftKernels.Fuzz;
using SharpFuzz;

if (args is ["--write-seeds", string seedRoot])
{
    SeedInputs.Write(seedRoot);
    return 0;
}

if (args is ["--replay", string replayTarget, .. var paths] && FuzzTargets.Names.Contains(replayTarget))
{
    return Replay(replayTarget, paths);
}

if (args.Length != 1 || !FuzzTargets.Names.Contains(args[0]))
{
    Console.Error.WriteLine($"usage: PeftKernels.Fuzz TARGET | --replay TARGET FILE|DIR... | --write-seeds DIR  (TARGET: {string.Join(", ", FuzzTargets.Names)})");
    return 2;
}

string target = args[0];
Fuzzer.Run(stream =>
{
    using var buffer = new MemoryStream();
    stream.CopyTo(buffer);
    try
    {
        FuzzTargets.Run(target, buffer.ToArray());
    }
    catch (Exception e) when (FuzzTargets.IsAllowed(e))
    {
        // Refused with the library's own exception: the expected outcome for a bad input.
    }
});
return 0;

static int Replay(string target, string[] paths)
{
    int bad = 0;
    foreach (string file in paths.SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p).Order(StringComparer.Ordinal) : (IEnumerable<string>)[p]))
    {
        var clock = Stopwatch.StartNew();
        string outcome;
        try
        {
            FuzzTargets.Run(target, File.ReadAllBytes(file));
            outcome = "accepted";
        }
        catch (Exception e)
        {
            bool allowed = FuzzTargets.IsAllowed(e);
            bad += allowed ? 0 : 1;
            outcome = $"{(allowed ? "refused" : "NOT ALLOWED")} {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}";
            if (!allowed)
            {
                outcome += Environment.NewLine + e.StackTrace;
            }
        }

        Console.WriteLine($"{file} [{clock.ElapsedMilliseconds} ms] {outcome}");
    }

    return bad == 0 ? 0 : 1;
}
