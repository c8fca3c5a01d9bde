// DecodeAccuracy measures the integer 4-bit decode path against the exact one: on a 4-bit tiny model
// the two must differ (the comparison sees the integer path) but only slightly (a few percent of the
// logit range at most, most greedy tokens equal); a model with no 4-bit weight is refused.
using System.CommandLine;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Testing;

namespace PeftKernels.Tests;

public sealed class DecodeAccuracyTests
{
    [Fact]
    public void IntegerDecodeIsCloseToTheExactPathButNotIdentical()
    {
        var model = TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, IntermediateSize = 192 }, scale: 3f);
        model.QuantizeLinears();
        var report = DecodeAccuracy.Compare(model, [[1, 2, 3], [7, 7, 8, 9, 10, 11], [30]], tokens: 12, threads: 1);
        Assert.Equal(36, report.Steps);
        Assert.True(report.MaxAbsError > 0, "the integer path must be what was compared");
        Assert.True(report.MaxRelativeError < 0.05, $"relative logit error {report.MaxRelativeError}");
        Assert.True(report.GreedyAgreement >= 0.75, $"greedy agreement {report.GreedyAgreement}");
        Assert.InRange(report.FreeRunningCommonPrefix, 0, 12);
    }

    [Fact]
    public void AModelWithoutFourBitWeightsIsRefused() =>
        Assert.Contains("no 4-bit projection", Assert.Throws<ArgumentException>(() => DecodeAccuracy.Compare(TinyLlama.Model(), [[1]], 2)).Message);

    [Fact]
    public void TheCliReportsTheErrorOfAModelFolder()
    {
        using var folder = new TempFolder();
        TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, IntermediateSize = 192 }, scale: 3f).Save(folder.Path);
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(["bench", "decode-error", "--model", folder.Path, "--prompts", "2", "--tokens", "5", "--threads", "1"])
            .Invoke(new InvocationConfiguration { Output = output, Error = error });
        Assert.True(code == 0, error.ToString());
        Assert.Contains("10 decode steps", output.ToString());
        Assert.Contains("greedy agreement", output.ToString());
        Assert.NotEqual(0, Cli.Cli.Build().Parse(["bench", "decode-error", "--tokens", "0"]).Invoke(new InvocationConfiguration { Output = output, Error = error }));
    }
}
