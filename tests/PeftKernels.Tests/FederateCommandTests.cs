using System.CommandLine;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>`peft federate`: FedAvg of A and B, the exact mean of B·A re-factorized by SVD, and mismatched adapters refused.</summary>
public sealed class FederateCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    /// <summary>A LoRA adapter of a tiny model with random A and B (seeded), saved as a PEFT folder.</summary>
    private string Client(string name, int seed, LoraConfig? config = null, LlamaConfig? model = null)
    {
        config ??= new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = TargetModules.FromList("q_proj", "v_proj"), BaseModelNameOrPath = "tiny" };
        var lm = LlamaForCausalLM.Create(model ?? LlamaConfig.Tiny(40), seed: 3);
        Lora.Apply(lm, config, seed: seed);
        var rng = new Random(seed);
        foreach (var (_, adapter) in Lora.Adapters(lm))
        {
            foreach (var p in new[] { adapter.A, adapter.B })
            {
                for (int i = 0; i < p.Data.Length; i++)
                {
                    p.Data[i] = (float)((rng.NextDouble() * 2) - 1) * 0.3f;
                }
            }
        }

        string dir = Path.Combine(folder.Path, name);
        Lora.Save(lm, dir, config);
        return dir;
    }

    private static Dictionary<string, float[]> Tensors(string dir)
    {
        using var file = SafeTensorsFile.Open(Path.Combine(dir, Lora.WeightsFile));
        return file.Names.ToDictionary(n => n, file.ReadFloat32);
    }

    /// <summary>scale·B·A [out, in] of one module, in double.</summary>
    private static double[] Product(Dictionary<string, float[]> t, string module, int r, double scale)
    {
        var a = t[module + ".lora_A.weight"];
        var b = t[module + ".lora_B.weight"];
        int inF = a.Length / r, outF = b.Length / r;
        var w = new double[outF * inF];
        for (int o = 0; o < outF; o++)
        {
            for (int q = 0; q < r; q++)
            {
                for (int i = 0; i < inF; i++)
                {
                    w[(o * inF) + i] += scale * b[(o * r) + q] * a[(q * inF) + i];
                }
            }
        }

        return w;
    }

    private static double Distance(double[] x, double[] y) => Math.Sqrt(x.Zip(y).Sum(p => (p.First - p.Second) * (p.First - p.Second)));

    [Fact]
    public void FedAvgAveragesAAndBSeparatelyByTheWeights()
    {
        string c1 = Client("c1", 1), c2 = Client("c2", 2), output = Path.Combine(folder.Path, "avg");
        var (code, log, error) = Invoke("federate", "--adapter", c1, "--weight", "3", "--adapter", c2, "--weight", "1", "--out", output);
        Assert.True(code == 0, error);
        Assert.Contains("averaged 2 adapters (4 LoRA modules; weights 3, 1 of 4) by FedAvg of A and B", log);
        var (t1, t2, avg) = (Tensors(c1), Tensors(c2), Tensors(output));
        Assert.Equal(t1.Keys.Order(), avg.Keys.Order());
        foreach (var (name, values) in avg)
        {
            for (int i = 0; i < values.Length; i++)
            {
                Assert.Equal((float)((0.75 * t1[name][i]) + (0.25 * t2[name][i])), values[i]);
            }
        }

        Assert.Equal(4, Assert.IsType<LoraConfig>(PeftConfig.Load(Path.Combine(output, Lora.ConfigFile))).R);
    }

    [Fact]
    public void ExactAveragesTheProductsAndBeatsFedAvgAtTheSameRank()
    {
        string c1 = Client("c1", 1), c2 = Client("c2", 2), c3 = Client("c3", 3);
        string full = Path.Combine(folder.Path, "exact12"), same = Path.Combine(folder.Path, "exact4"), fedavg = Path.Combine(folder.Path, "fedavg");
        string[] clients = ["--adapter", c1, "--weight", "2", "--adapter", c2, "--weight", "1", "--adapter", c3, "--weight", "1"];
        Assert.Equal(0, Invoke(["federate", .. clients, "--exact", "--rank", "12", "--out", full]).Code);
        Assert.Equal(0, Invoke(["federate", .. clients, "--exact", "--rank", "4", "--out", same]).Code);
        Assert.Equal(0, Invoke(["federate", .. clients, "--out", fedavg]).Code);
        var config = Assert.IsType<LoraConfig>(PeftConfig.Load(Path.Combine(full, Lora.ConfigFile)));
        Assert.Equal((12, 8.0), (config.R, config.LoraAlpha));
        var inputs = new[] { c1, c2, c3 }.Select(Tensors).ToList();
        double[] weights = [0.5, 0.25, 0.25];
        string module = "base_model.model.model.layers.1.self_attn.v_proj";
        Assert.Contains(module + ".lora_A.weight", inputs[0].Keys);
        var mean = new double[Product(inputs[0], module, 4, 2).Length];
        for (int k = 0; k < 3; k++)
        {
            var p = Product(inputs[k], module, 4, 2);
            for (int i = 0; i < mean.Length; i++)
            {
                mean[i] += weights[k] * p[i];
            }
        }

        double norm = Math.Sqrt(mean.Sum(v => v * v));
        double exactError = Distance(Product(Tensors(full), module, 12, 8.0 / 12), mean);
        Assert.True(exactError < 1e-5 * norm, $"rank 12 = 3 × 4 keeps the mean update: error {exactError} of {norm}");
        double rank4 = Distance(Product(Tensors(same), module, 4, 2), mean), avg = Distance(Product(Tensors(fedavg), module, 4, 2), mean);
        Assert.True(rank4 < avg, $"the best rank-4 approximation ({rank4}) must be closer to the mean update than FedAvg's product ({avg})");
    }

    [Theory]
    [InlineData("rank", "r is 8 there, 4 in")]
    [InlineData("targets", "target_modules is k_proj,q_proj there, q_proj,v_proj in")]
    [InlineData("base", "base_model_name_or_path is other there, tiny in")]
    [InlineData("shape", "the shape of base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is [4, 128] there, [4, 64] in")]
    public void MismatchedAdaptersAreRefusedAndNothingIsWritten(string what, string message)
    {
        var baseConfig = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = TargetModules.FromList("q_proj", "v_proj"), BaseModelNameOrPath = "tiny" };
        string c1 = Client("c1", 1);
        string c2 = what switch
        {
            "rank" => Client("c2", 2, baseConfig with { R = 8 }),
            "targets" => Client("c2", 2, baseConfig with { TargetModules = TargetModules.FromList("q_proj", "k_proj") }),
            "base" => Client("c2", 2, baseConfig with { BaseModelNameOrPath = "other" }),
            _ => Client("c2", 2, model: LlamaConfig.Tiny(40) with { HiddenSize = 128 }),
        };
        string output = Path.Combine(folder.Path, "out");
        var (code, _, error) = Invoke("federate", "--adapter", c1, "--adapter", c2, "--out", output);
        Assert.Equal(1, code);
        Assert.Contains(message, error);
        Assert.Contains(c2 + " does not match " + c1, error);
        Assert.False(Directory.Exists(output), "nothing is written for refused adapters");
    }

    [Theory]
    [InlineData("weights", "give one --weight per --adapter (2) or none; got 1")]
    [InlineData("zero", "--weight must be a positive sample count; got 0")]
    [InlineData("one", "federate needs at least two --adapter folders; got 1")]
    [InlineData("exact", "--exact needs --rank R")]
    [InlineData("rank", "--rank applies with --exact")]
    [InlineData("big", "--rank 100 exceeds min(in, out) = 64")]
    public void BadOptionsAreRefused(string what, string message)
    {
        string c1 = Client("c1", 1), c2 = Client("c2", 2), output = Path.Combine(folder.Path, "out");
        string[] args = what switch
        {
            "weights" => ["--adapter", c1, "--adapter", c2, "--weight", "1"],
            "zero" => ["--adapter", c1, "--weight", "0", "--adapter", c2, "--weight", "1"],
            "one" => ["--adapter", c1],
            "exact" => ["--adapter", c1, "--adapter", c2, "--exact"],
            "rank" => ["--adapter", c1, "--adapter", c2, "--rank", "4"],
            _ => ["--adapter", c1, "--adapter", c2, "--exact", "--rank", "100"],
        };
        var (code, _, error) = Invoke(["federate", .. args, "--out", output]);
        Assert.Equal(1, code);
        Assert.Contains(message, error);
        Assert.False(Directory.Exists(output));
    }

    public void Dispose() => folder.Dispose();

    internal static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
