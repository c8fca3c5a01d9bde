// Replays every committed fuzz input (tools/fuzz/corpus/<target>/: the minimized afl-fuzz corpora
// and one crash-* file per reader bug the fuzzers found) through the harness afl-fuzz runs
// (tools/PeftKernels.Fuzz/FuzzTargets.cs, compiled into this assembly): each input must be
// accepted or refused with InvalidDataException / NotSupportedException, within a time limit.
using System.CommandLine;
using System.Diagnostics;
using PeftKernels.Fuzz;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class FuzzCorpusTests
{
    /// <summary>afl-fuzz ran with -t 1000; the test allows more for a loaded CI machine.</summary>
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(5);

    public static TheoryData<string> Targets() => [.. FuzzTargets.Names];

    [Theory]
    [MemberData(nameof(Targets))]
    public void EveryCorpusInputIsAcceptedOrRefusedWithTheLibrarysOwnException(string target)
    {
        string[] files = Directory.GetFiles(Path.Combine(CorpusRoot(), target));
        Assert.NotEmpty(files);
        var failures = new List<string>();
        foreach (string file in files.Order(StringComparer.Ordinal))
        {
            byte[] input = File.ReadAllBytes(file);
            var clock = Stopwatch.StartNew();
            try
            {
                FuzzTargets.Run(target, input);
            }
            catch (Exception e) when (FuzzTargets.IsAllowed(e))
            {
                Assert.False(string.IsNullOrWhiteSpace(e.Message), $"{file}: {e.GetType().Name} without a message");
            }
            catch (Exception e)
            {
                failures.Add($"{Path.GetFileName(file)}: {e.GetType().Name}: {e.Message}");
            }

            if (clock.Elapsed > Limit)
            {
                failures.Add($"{Path.GetFileName(file)}: took {clock.Elapsed.TotalSeconds:F1} s");
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of {files.Length} {target} inputs escaped the policy:\n" + string.Join("\n", failures));
    }

    /// <summary>The crash-* inputs of the readers a CLI verb loads from a model folder, as (target, file name in the folder).</summary>
    public static TheoryData<string, string> CrashInputs()
    {
        var data = new TheoryData<string, string>();
        foreach (var (target, file) in new[] { (FuzzTargets.ConfigJson, "config.json"), (FuzzTargets.TokenizerJson, "tokenizer.json"), (FuzzTargets.TokenizerModel, "tokenizer.model") })
        {
            foreach (string crash in Directory.GetFiles(Path.Combine(CorpusRoot(), target), "crash-*").Order(StringComparer.Ordinal))
            {
                data.Add(Path.GetRelativePath(CorpusRoot(), crash), file);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(CrashInputs))]
    public async Task GenerateRefusesEachCrashInputWithOneLineNamingTheFile(string crash, string file)
    {
        using var folder = new TempFolder();
        string model = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 1f).Save(model);
        string path = Path.Combine(model, file);
        File.Copy(Path.Combine(CorpusRoot(), crash), path, overwrite: true);

        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        var run = Task.Run(() => Cli.Cli.Build().Parse(["generate", "--model", model, "--prompt", "Hello, wörld!", "--max-new-tokens", "1"])
            .Invoke(new InvocationConfiguration { Output = output, Error = error }));
        Assert.True(await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(30))) == run, $"{crash}: generate did not finish in 30 s");

        Assert.Equal(1, await run);
        Assert.StartsWith($"error: {path}: ", error.ToString());
        Assert.Single(error.ToString().TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void EveryTargetHasACorpusAndEveryCorpusATarget()
    {
        var folders = Directory.GetDirectories(CorpusRoot()).Select(Path.GetFileName).Order(StringComparer.Ordinal);
        Assert.Equal(FuzzTargets.Names.Order(StringComparer.Ordinal), folders);
    }

    [Fact]
    public void AnUnknownTargetIsAnArgumentError() =>
        Assert.Throws<ArgumentException>(() => FuzzTargets.Run("no-such-target", []));

    private static string CorpusRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            string corpus = Path.Combine(dir.FullName, "tools", "fuzz", "corpus");
            if (Directory.Exists(corpus))
            {
                return corpus;
            }
        }

        throw new DirectoryNotFoundException($"no tools/fuzz/corpus above {AppContext.BaseDirectory}");
    }
}
