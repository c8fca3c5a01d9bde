// Replays every committed fuzz input (tools/fuzz/corpus/<target>/: the minimized afl-fuzz corpora
// and one crash-* file per reader bug the fuzzers found) through the harness afl-fuzz runs
// (tools/PeftKernels.Fuzz/FuzzTargets.cs, compiled into this assembly): each input must be
// accepted or refused with InvalidDataException / NotSupportedException, within a time limit.
using System.Diagnostics;
using PeftKernels.Fuzz;
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
