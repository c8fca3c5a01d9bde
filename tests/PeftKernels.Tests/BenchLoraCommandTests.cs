// `peft bench lora` (the project side of bench/peers/lora-backward-vs-torch.sh): one RESULT line per
// op at each shape and thread count, in the key=value form the harness parses; a malformed shape is
// refused with the expected form before anything runs.
using System.CommandLine;
using System.Globalization;
using Xunit;

namespace PeftKernels.Tests;

public sealed class BenchLoraCommandTests
{
    [Fact]
    public void ATinyShapeGivesOneParsableResultLinePerOpAndThreadCount()
    {
        var (code, output, error) = Invoke(["bench", "lora", "--shape", "3x5x7r2", "--threads", "1", "2", "--repeats", "1"]);
        Assert.True(code == 0, error);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(6, lines.Length);
        var fields = lines.Select(l => l.Split(' ').Skip(1).Select(p => p.Split('=', 2)).ToDictionary(p => p[0], p => p[1])).ToArray();
        Assert.All(lines, l => Assert.StartsWith("RESULT side=peft ", l, StringComparison.Ordinal));
        Assert.Equal(["base_gemm", "forward", "backward", "base_gemm", "forward", "backward"], fields.Select(f => f["op"]));
        Assert.Equal(["1", "1", "1", "2", "2", "2"], fields.Select(f => f["threads"]));
        Assert.All(fields, f => Assert.Equal("3x5x7r2", f["shape"]));
        Assert.All(fields, f => Assert.True(double.Parse(f["median_ms"], CultureInfo.InvariantCulture) > 0));
    }

    [Theory]
    [InlineData("3x5x7")]
    [InlineData("3x5x0r2")]
    [InlineData("ax5x7r2")]
    [InlineData("3x5x7r2x1")]
    public void AMalformedShapeIsRefusedWithTheExpectedForm(string shape)
    {
        var (code, output, error) = Invoke(["bench", "lora", "--shape", shape, "--threads", "1", "--repeats", "1"]);
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.Contains($"--shape '{shape}': expected NxINxOUTrR", error, StringComparison.Ordinal);
    }

    private static (int Code, string Output, string Error) Invoke(string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
