// `peft merge` never writes a non-finite model and says what it did: --weight must be finite;
// every tensor it would write is checked, merged or not, with or without --safe, and the refusal
// names the tensor, the count and the first bad element; --safe's own message gives the real
// offending value (not the restored base value); the storage/probe line is a numerical
// difference, not an error; a 4-bit base counts every 4-bit weight it dequantized.
using System.CommandLine;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>What merge refuses and what it reports.</summary>
public sealed class MergeResultTests : IDisposable
{
    private readonly TempFolder folder = new();

    public MergeResultTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
    }

    private string ModelFolder { get; }

    private string Output => Path.Combine(folder.Path, "merged");

    public void Dispose() => folder.Dispose();

    private string SaveAdapter(string name, string targets, float poison = 0f)
    {
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model, PeftModelTests.Config(targets, 2));
        PeftModelTests.Randomize(model, "default", 5);
        if (poison != 0f)
        {
            Lora.Adapters(model).First().Adapter.A.Data.AsSpan().Fill(poison);
        }

        string dir = Path.Combine(folder.Path, name);
        peft.SaveAdapter(dir);
        return dir;
    }

    [Theory]
    [InlineData("NaN")]
    [InlineData("Infinity")]
    [InlineData("1e309")]
    public void ANonFiniteWeightIsRefusedBeforeAnyWork(string weight)
    {
        string adapter = SaveAdapter("a", "q_proj");
        var (code, text, error) = Invoke("merge", "--model", ModelFolder, "--adapter", adapter, "--weight", weight, "--out", Output);
        Assert.Equal((1, ""), (code, text));
        Assert.StartsWith("error: --weight must be finite; got ", error);
        Assert.False(Directory.Exists(Output));
    }

    [Fact]
    public void SafeMergeNamesTheTensorAndTheRealNonFiniteValue()
    {
        string poison = SaveAdapter("poison", "q_proj", float.MaxValue);
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", poison, "--safe", "--out", Output);
        Assert.Equal(1, code);
        Assert.Matches(@"safe merge of adapter 'default' into 'model\.layers\.0\.self_attn\.q_proj\.weight' gives \d+ non-finite value\(s\) of 4096, "
            + @"the first (NaN|-?Infinity) at \[\d+, \d+\]; nothing was merged\.", error);
        Assert.False(Directory.Exists(Output));
    }

    [Fact]
    public void WithoutSafeANonFiniteMergeIsRefusedNamingTensorAndCount()
    {
        string poison = SaveAdapter("poison", "q_proj", float.MaxValue);
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", poison, "--out", Output);
        Assert.Equal(1, code);
        Assert.Matches(@"error: the merged model has non-finite values in 1 tensor\(s\): 'model\.layers\.0\.self_attn\.q_proj\.weight' has \d+ of 4096 "
            + @"\(the first (NaN|-?Infinity) at \[\d+, \d+\]\); nothing was written\.", error);
        Assert.False(Directory.Exists(Output));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ANonFiniteValueInATensorNoAdapterTouchesIsRefusedToo(bool safe)
    {
        string adapter = SaveAdapter("a", "q_proj");
        var model = LlamaForCausalLM.Load(ModelFolder);
        model.LmHead.Weight.Data[64 + 7] = float.NaN;
        model.LmHead.Weight.Data[300] = float.PositiveInfinity;
        string poisoned = Path.Combine(folder.Path, "nan-head");
        model.Save(poisoned);

        string[] args = ["merge", "--model", poisoned, "--adapter", adapter, "--out", Output, .. safe ? new[] { "--safe" } : []];
        var (code, _, error) = Invoke(args);
        Assert.Equal(1, code);
        Assert.Contains("error: the merged model has non-finite values in 1 tensor(s): 'lm_head.weight' has 2 of 16384 (the first NaN at [1, 7]); nothing was written.\n", error);
        Assert.False(Directory.Exists(Output));
    }

    [Fact]
    public void AFourBitBaseCountsEveryWeightItDequantized()
    {
        string adapter = SaveAdapter("a", "q_proj,embed_tokens"), quantized = Path.Combine(folder.Path, "nf4");
        Assert.Equal(0, Invoke("quantize", ModelFolder, quantized).Code);
        var (code, text, error) = Invoke("merge", "--model", quantized, "--adapter", adapter, "--out", Output);
        Assert.Equal((0, ""), (code, error));

        // 7 Linear weights per layer, two layers: all written dequantized, the two q_proj merged.
        Assert.Contains("merging into a 4-bit base: 14 4-bit weight(s) dequantized (2 of them merged) and kept as F32 (", text);
        Assert.Contains("numerical difference: merged weights differ from W + ΔW (fp32) by max ", text);
        Assert.DoesNotContain("merge error", text);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
