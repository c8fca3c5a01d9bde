// `peft bench serve` (issue 15, item 6) run in-process on the tiny model with --quick: every
// scenario row is printed for every base, the JSON file holds every scenario with the tokens each
// had to generate, the target ratios and the adapter latency; explicit sizes override --quick's;
// bad options fail up front with one line naming the option. No timing is asserted (only that
// each measured rate is positive and finite).
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Cli;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class BenchServeCommandTests : IDisposable
{
    private static readonly string[] Rows = ["a) one adapter", "b) 8 adapters", "c) 8 adapters", "d) merged model", "e) adapter by adapter", "f) batch-1"];
    private readonly TempFolder folder = new();

    [Fact]
    public void QuickTinyPrintsEveryScenarioForEveryBaseAndWritesTheJson()
    {
        string json = folder.File("serve.json");
        var (code, output, error) = Invoke("bench", "serve", "--quick", "--tiny", "--threads", "1", "--base", "fp32", "nf4", "--json", json);
        Assert.Equal((0, ""), (code, error));
        foreach (string row in Rows)
        {
            // One row per base, each with its numbers.
            Assert.Equal(2, output.Split('\n').Count(l => l.StartsWith(row + " ", StringComparison.Ordinal) && l.Contains('x', StringComparison.Ordinal)));
        }

        Assert.Contains("fp32 base, 1 thread(s)", output);
        Assert.Contains("nf4 base, 1 thread(s)", output);
        Assert.Contains("(c)/(a) = ", output);
        Assert.Contains("(c)/(e) = ", output);
        Assert.Contains("(a)/(f) = ", output);
        Assert.Contains("cold ", output);
        Assert.Contains("CPU: ", output);

        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("machine").GetProperty("cpu").GetString()));
        Assert.True(root.GetProperty("machine").GetProperty("fma_peak_gflops").GetProperty("1").GetDouble() > 0);
        Assert.Equal(8, root.GetProperty("options").GetProperty("sequences").GetInt32());
        Assert.Equal(16, root.GetProperty("options").GetProperty("generate").GetInt32());
        var runs = root.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(["fp32", "nf4"], runs.Select(r => r.GetProperty("base").GetString()));
        foreach (var run in runs)
        {
            var scenarios = run.GetProperty("scenarios").EnumerateArray().ToDictionary(s => s.GetProperty("key").GetString()!);
            Assert.Equal(["a", "b", "c", "d", "e", "f"], scenarios.Keys);
            foreach (var (key, s) in scenarios)
            {
                int sequences = key == "f" ? 1 : 8;
                Assert.Equal(sequences, s.GetProperty("sequences").GetInt32());
                Assert.Equal(sequences * 16, s.GetProperty("tokens").GetInt64());
                Assert.InRange(s.GetProperty("tokens_per_second").GetDouble(), double.Epsilon, double.MaxValue);
                Assert.InRange(s.GetProperty("decode_tokens_per_second").GetDouble(), double.Epsilon, double.MaxValue);
                Assert.InRange(s.GetProperty("ttft_ms_median").GetDouble(), 0, double.MaxValue);
            }

            Assert.Equal([1, 8, 8, 0, 8, 1], scenarios.Values.Select(s => s.GetProperty("adapters").GetInt32()));
            Assert.True(scenarios["d"].GetProperty("merged").GetBoolean());
            var ratios = run.GetProperty("ratios");
            Assert.Equal(scenarios["c"].GetProperty("tokens_per_second").GetDouble() / scenarios["a"].GetProperty("tokens_per_second").GetDouble(),
                ratios.GetProperty("c_over_a").GetDouble(), 1e-9);
            Assert.Equal(5, ratios.GetProperty("c_over_e_target").GetDouble());
            Assert.True(ratios.GetProperty("a_over_f").GetDouble() > 0);
            var latency = run.GetProperty("adapter_latency_ms");
            Assert.True(latency.GetProperty("cold").GetDouble() > 0 && latency.GetProperty("warm").GetDouble() > 0);
        }

        Assert.Equal(["serve.json"], folder.Entries());
    }

    [Fact]
    public void GivenSizesOverrideQuickOnes()
    {
        string json = folder.File("serve.json");
        var (code, _, error) = Invoke("bench", "serve", "--quick", "--tiny", "--threads", "1", "--sequences", "3", "--prompt", "5", "--generate", "4", "--adapters", "2", "--json", json);
        Assert.Equal((0, ""), (code, error));
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var run = doc.RootElement.GetProperty("runs")[0];
        Assert.Equal("fp32", run.GetProperty("base").GetString());
        var scenarios = run.GetProperty("scenarios").EnumerateArray().ToList();
        Assert.Equal([12L, 12, 12, 12, 12, 4], scenarios.Select(s => s.GetProperty("tokens").GetInt64()));
        Assert.Equal([1, 2, 2, 0, 2, 1], scenarios.Select(s => s.GetProperty("adapters").GetInt32()));
        Assert.Equal(2, doc.RootElement.GetProperty("options").GetProperty("adapters_many").GetInt32());
    }

    [Fact]
    public void KvCacheIntegerDecodeAndComputeApplyToTheRunAndAreRecorded()
    {
        string json = folder.File("serve.json");
        var (code, output, error) = Invoke("bench", "serve", "--quick", "--tiny", "--threads", "1", "--base", "nf4", "--kv-cache", "bf16", "--integer-decode",
            "--compute", "bf16", "--json", json);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("KV cache bf16, compute bf16, integer decode", output);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var options = doc.RootElement.GetProperty("options");
        Assert.Equal("bf16", options.GetProperty("kv_cache").GetString());
        Assert.True(options.GetProperty("integer_decode").GetBoolean());
        Assert.Equal("bf16", options.GetProperty("compute").GetString());
        var scenarios = doc.RootElement.GetProperty("runs")[0].GetProperty("scenarios").EnumerateArray().ToList();
        Assert.Equal([128L, 128, 128, 128, 128, 16], scenarios.Select(s => s.GetProperty("tokens").GetInt64()));

        (code, _, error) = Invoke("bench", "serve", "--quick", "--tiny", "--kv-cache", "fp16");
        Assert.Equal(1, code);
        Assert.Contains("'fp16'", error);
    }

    [Theory]
    [InlineData("--sequences must be >= 1; got 0.", "--sequences", "0")]
    [InlineData("--prompt must be >= 1; got 0.", "--prompt", "0")]
    [InlineData("--generate must be >= 1; got -2.", "--generate", "-2")]
    [InlineData("--adapters must be >= 1; got 0.", "--adapters", "0")]
    [InlineData("--batch-tokens must be >= --sequences (8)", "--batch-tokens", "4")]
    [InlineData("--base must be fp32 or nf4; got 'fp16'.", "--base", "fp16")]
    [InlineData("--threads must be >= 0", "--threads", "-1")]
    [InlineData("--prompt + --generate must be <= the model's max_position_embeddings (512); got 500 + 16.", "--prompt", "500")]
    public void ABadOptionIsRefusedUpFrontNamingIt(string message, string option, string value)
    {
        string json = folder.File("serve.json");
        var (code, output, error) = Invoke("bench", "serve", "--quick", "--tiny", option, value, "--json", json);
        Assert.Equal((1, ""), (code, output));
        Assert.StartsWith($"error: {message}", error);
        Assert.Single(error.Trim().Split('\n'));
        Assert.False(File.Exists(json));
    }

    [Fact]
    public void AnExistingJsonFileIsKeptWithoutOverwriteAndTinyExcludesModel()
    {
        string json = folder.File("serve.json");
        File.WriteAllText(json, "keep");
        var (code, output, error) = Invoke("bench", "serve", "--quick", "--tiny", "--json", json);
        Assert.Equal((1, ""), (code, output));
        Assert.StartsWith($"error: --json {json} already exists; give --overwrite", error);
        Assert.Equal("keep", File.ReadAllText(json));

        (code, _, error) = Invoke("bench", "serve", "--quick", "--tiny", "--model", folder.Path);
        Assert.Equal(1, code);
        Assert.StartsWith("error: --tiny and --model exclude each other", error);
    }

    [Fact]
    public void DecodeFlopsPerTokenCountTwoPerLinearWeightPlusAttention()
    {
        var c = LlamaConfig.Llama125M();
        long weights = c.ParameterCount() - ((long)c.VocabSize * c.HiddenSize) - (((2L * c.NumHiddenLayers) + 1) * c.HiddenSize); // less embedding and norms
        Assert.Equal(2.0 * weights, ServeBenchmark.DecodeFlopsPerToken(c, 0));
        Assert.Equal((2.0 * weights) + (4.0 * 12 * 768 * 100), ServeBenchmark.DecodeFlopsPerToken(c, 100));
    }

    public void Dispose() => folder.Dispose();

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
