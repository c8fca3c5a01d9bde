// `peft quantize` / `peft dequantize` through the same System.CommandLine root the program
// builds: help, a successful run printing the table, option values reaching the library, and
// every failure ending as usage or one "error: ..." line with a non-zero exit code.
using System.CommandLine;
using PeftKernels.Cli;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Quantization;
using Xunit;
using static PeftKernels.Tests.ModelQuantizerFixtures;

namespace PeftKernels.Tests;

/// <summary>The quantize and dequantize verbs of the `peft` command.</summary>
public sealed class QuantizeCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Theory]
    [InlineData("quantize", "--double-quant")]
    [InlineData("dequantize", "--dtype <bf16|f16|f32>")]
    public void HelpDescribesTheVerb(string verb, string fragment)
    {
        var (code, output, error) = Invoke(verb, "--help");
        Assert.Equal((0, ""), (code, error));
        Assert.Contains($"{verb} <input> <output> [options]", output);
        Assert.Contains(fragment, output);
    }

    [Fact]
    public void QuantizeAndDequantizePrintTheirTablesAndPassTheOptions()
    {
        string input = folder.File("in.safetensors"), quantized = folder.File("q.safetensors"), restored = folder.File("r.safetensors");
        WriteMixed(input);
        var (code, output, error) = Invoke("quantize", input, quantized, "--type", "fp4", "--blocksize", "128", "--double-quant", "--exclude", "up_proj");
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("quantize fp4, blocksize 128, double-quant on", output);
        Assert.Contains($"{Q}  [48, 80]", output);
        Assert.Contains("F32->fp4+dq/128", output);
        Assert.DoesNotContain(Up, output);
        using (var file = SafeTensorsFile.Open(quantized))
        {
            var weight = Bnb4bitStateDict.FromTensors(file, K);
            Assert.Equal((Quant4Type.Fp4, 128, true), (weight.Type, weight.Blocksize, weight.IsNested));
            Assert.False(Bnb4bitStateDict.IsQuantized(file, Up));
        }

        (code, output, error) = Invoke("dequantize", quantized, restored, "--dtype", "bf16");
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("fp4+dq/128->BF16", output);
        using var back = SafeTensorsFile.Open(restored);
        Assert.Equal(SafeTensorDType.BF16, back.GetInfo(Q).DType);
    }

    [Theory]
    [InlineData("missing", "does not exist")]
    [InlineData("same", "is the same path as input")]
    [InlineData("--blocksize=100", "option --blocksize: 100")]
    [InlineData("--include=(", "option --include")]
    [InlineData("corrupt", "corrupt.safetensors")]
    public void LibraryErrorsPrintOneErrorLineAndExitOne(string variant, string fragment)
    {
        string input = folder.File("in.safetensors"), corrupt = folder.File("corrupt.safetensors");
        WriteMixed(input);
        File.WriteAllBytes(corrupt, [1, 2, 3]);
        string[] args = variant switch
        {
            "missing" => ["quantize", folder.File("missing.safetensors"), folder.File("o.safetensors")],
            "same" => ["quantize", input, input],
            "corrupt" => ["dequantize", corrupt, folder.File("o.safetensors")],
            _ => ["quantize", input, folder.File("o.safetensors"), variant],
        };
        var (code, output, error) = Invoke(args);
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.StartsWith("error: ", error);
        Assert.Contains(fragment, error);
        Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.DoesNotContain("   at ", error);
        Assert.DoesNotContain("(Parameter", error);
        Assert.Equal(["corrupt.safetensors", "in.safetensors"], folder.Entries());
    }

    [Theory]
    [InlineData("quantize", "in.safetensors", "o.safetensors", "--type", "nf5")]
    [InlineData("quantize", "in.safetensors", "o.safetensors", "--blocksize", "big")]
    [InlineData("dequantize", "in.safetensors", "o.safetensors", "--dtype", "f64")]
    [InlineData("quantize", "in.safetensors")]
    [InlineData("dequantize", "in.safetensors", "o.safetensors", "--frobnicate")]
    public void ParseErrorsPrintUsageAndExitNonZero(params string[] args)
    {
        string[] withPaths = [.. args.Select(a => a.EndsWith(".safetensors", StringComparison.Ordinal) ? folder.File(a) : a)];
        var (code, output, error) = Invoke(withPaths);
        Assert.NotEqual(0, code);
        Assert.NotEqual("", error);
        Assert.Contains($"{args[0]} <input> <output> [options]", output);
        Assert.False(File.Exists(folder.File("o.safetensors")));
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
