// Loading a model or an adapter with NaN or infinite values is never silent: the library lists every
// such tensor with its counts (fp32, bf16, fp16, a 4-bit weight's absmax), the CLI verbs that load
// print them as "warning: ..." lines, and score/generate fail naming the first non-finite tensor or
// logits row when the output is not finite; generation checks every step's logits row.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Quantization;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Non-finite weights found on load are reported; score and generate refuse non-finite outputs naming the cause.</summary>
public sealed class NonFiniteLoadTests : IDisposable
{
    private const string Q0 = "model.layers.0.self_attn.q_proj.weight";

    private readonly TempFolder folder = new();

    public NonFiniteLoadTests()
    {
        ModelFolder = System.IO.Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
    }

    private string ModelFolder { get; }

    private string Weights => System.IO.Path.Combine(ModelFolder, "model.safetensors");

    public void Dispose() => folder.Dispose();

    /// <summary>Rewrites model.safetensors, replacing each tensor by what <paramref name="edit"/> returns for it (fp32 values in, tensors out).</summary>
    private void Rewrite(Func<string, float[], long[], IEnumerable<SafeTensor>?> edit)
    {
        var tensors = new List<SafeTensor>();
        using (var file = SafeTensorsFile.Open(Weights))
        {
            foreach (string name in file.Names)
            {
                long[] shape = [.. file.GetInfo(name).Shape];
                var values = file.ReadFloat32(name);
                tensors.AddRange(edit(name, values, shape) ?? [SafeTensor.FromFloat32(name, values, shape)]);
            }
        }

        SafeTensorsWriter.Write(Weights, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    private static float[] Poison(float[] values, params (int At, float Value)[] poisons)
    {
        foreach (var (at, value) in poisons)
        {
            values[at] = value;
        }

        return values;
    }

    [Fact]
    public void ACleanModelAndAdapterListNoTensor()
    {
        var lm = LlamaForCausalLM.Load(ModelFolder);
        Assert.Empty(lm.NonFiniteTensors);
        var (code, _, error) = Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3");
        Assert.Equal((0, ""), (code, error));
    }

    [Fact]
    public void LoadListsEveryNonFiniteTensorOfEachDtypeWithItsCounts()
    {
        string k0 = "model.layers.0.self_attn.k_proj.weight", v0 = "model.layers.0.self_attn.v_proj.weight", o1 = "model.layers.1.self_attn.o_proj.weight";
        string norm = "model.norm.weight";
        Rewrite((name, values, shape) =>
        {
            if (name == Q0)
            {
                return [SafeTensor.FromFloat32(name, Poison(values, (0, float.NaN), (5, float.NaN), (9, float.PositiveInfinity)), shape)];
            }

            if (name == k0)
            {
                Poison(values, (3, float.NegativeInfinity));
                return [SafeTensor.FromBf16Bits(name, [.. values.Select(Kernels.Reference.Bf16Reference.FromSingle)], shape)];
            }

            if (name == v0)
            {
                Poison(values, (7, float.NaN));
                return [SafeTensor.FromHalf(name, [.. values.Select(v => (Half)v)], shape)];
            }

            if (name == o1)
            {
                var q = QuantizedWeight.Quantize(values, [(int)shape[0], (int)shape[1]], Quant4Type.Nf4, 64, doubleQuant: false);
                q.Absmax![2] = float.NaN;
                return Bnb4bitStateDict.ToTensors(name, q);
            }

            return name == norm ? [SafeTensor.FromFloat32(name, Poison(values, (1, float.PositiveInfinity), (2, float.NegativeInfinity)), shape)] : null;
        });

        var lm = LlamaForCausalLM.Load(ModelFolder);
        Assert.Equal(TensorDType.BF16, lm.Model.Layers[0].SelfAttn.KProj.Weight.DType);
        Assert.Equal(TensorDType.F16, lm.Model.Layers[0].SelfAttn.VProj.Weight.DType);
        Assert.Equal(TensorDType.Q4, lm.Model.Layers[1].SelfAttn.OProj.Weight.DType);
        Assert.Equal(
        [
            new NonFiniteTensor(Weights, Q0, 2, 1, 0, 64 * 64),
            new NonFiniteTensor(Weights, k0, 0, 0, 1, 32 * 64),
            new NonFiniteTensor(Weights, v0, 1, 0, 0, 32 * 64),
            new NonFiniteTensor(Weights, o1 + ".absmax", 1, 0, 0, 64 * 64 / 64),
            new NonFiniteTensor(Weights, norm, 0, 1, 1, 64),
        ], lm.NonFiniteTensors);
        Assert.Equal($"tensor '{Q0}' in {Weights} has 2 NaN, 1 +Inf of 4096 elements", lm.NonFiniteTensors[0].ToString());
        Assert.Equal($"tensor '{norm}' in {Weights} has 1 +Inf, 1 -Inf of 64 elements", lm.NonFiniteTensors[4].ToString());
    }

    [Fact]
    public void AnAdapterWithNaNListsItsTensors()
    {
        string adapter = System.IO.Path.Combine(folder.Path, "adapter");
        var source = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(source, PeftModelTests.Config("q_proj,v_proj"));
        Array.Fill(source.Model.Layers[1].SelfAttn.VProj.Adapters[0].B.Data, float.NaN);
        peft.SaveAdapter(adapter);

        var loaded = new PeftModel(LlamaForCausalLM.Load(ModelFolder));
        loaded.LoadAdapter(adapter);
        var expected = new NonFiniteTensor(System.IO.Path.Combine(adapter, Lora.WeightsFile), "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", 32 * 4, 0, 0, 32 * 4);
        Assert.Equal([expected], loaded.NonFiniteTensors());
        loaded.DeleteAdapter("default");
        Assert.Empty(loaded.NonFiniteTensors());

        var (code, output, error) = Invoke("score", "--model", ModelFolder, "--adapter", adapter, "--tokens", "1,2,3");
        Assert.Equal((1, ""), (code, output));
        Assert.Equal(
            $"warning: {expected}\n"
            + "error: the logits are not finite: row 0 (token position 0, token id 1) has NaN at vocabulary index 0; "
            + $"the weights hold NaN or infinite values: {expected}.\n", error);

        var inspected = Invoke("adapters", "inspect", adapter);
        Assert.Equal(0, inspected.Code);
        Assert.Equal($"warning: {expected}\n", inspected.Error);
    }

    [Fact]
    public void ScoreWarnsAboutANaNThatDoesNotReachTheLossAndPrintsIt()
    {
        Rewrite((name, values, shape) => name == "model.embed_tokens.weight" ? [SafeTensor.FromFloat32(name, Poison(values, ((200 * 64) + 3, float.NaN)), shape)] : null);
        var (code, output, error) = Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3");
        Assert.Equal(0, code);
        Assert.Equal($"warning: tensor 'model.embed_tokens.weight' in {Weights} has 1 NaN of 16384 elements\n", error);
        using var json = JsonDocument.Parse(output);
        Assert.True(double.IsFinite(json.RootElement.GetProperty("loss").GetDouble()));
    }

    [Fact]
    public void ScoreFailsNamingTheFirstNonFiniteTensorAndListsAFewWarnings()
    {
        Rewrite((name, values, shape) => name.Contains("_proj", StringComparison.Ordinal) ? [SafeTensor.FromFloat32(name, Poison(values, (0, float.NaN)), shape)] : null);
        var (code, output, error) = Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3");
        Assert.Equal((1, ""), (code, output));
        var lines = error.TrimEnd('\n').Split('\n');
        Assert.Equal(7, lines.Length);
        Assert.All(lines[..5], l => Assert.StartsWith("warning: tensor 'model.layers.0.", l, StringComparison.Ordinal));
        Assert.Equal("warning: … and 9 more tensor(s) with NaN or infinite values", lines[5]);
        Assert.Equal("error: the logits are not finite: row 0 (token position 0, token id 1) has NaN at vocabulary index 0; the weights hold NaN or infinite values: "
            + $"tensor '{Q0}' in {Weights} has 1 NaN of 4096 elements (and 13 more tensor(s)).", lines[6]);
    }

    [Fact]
    public void GenerateRefusesANonFiniteLogitsRowAtALaterStepNamingTheStep()
    {
        var clean = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6", "--max-new-tokens", "3");
        Assert.Equal((0, ""), (clean.Code, clean.Error));
        int first = int.Parse(clean.Output.Trim().Split(',')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.NotEqual(5, first);
        Assert.NotEqual(6, first);

        // The embedding row of the first generated token is NaN: the prompt's logits are finite, the next step's are not.
        Rewrite((name, values, shape) => name == "model.embed_tokens.weight" ? [SafeTensor.FromFloat32(name, Poison(values, (first * 64, float.NaN)), shape)] : null);
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6", "--max-new-tokens", "3");
        Assert.Equal((1, ""), (code, output));
        string tensor = $"tensor 'model.embed_tokens.weight' in {Weights} has 1 NaN of 16384 elements";
        Assert.Equal($"warning: {tensor}\nerror: the logits are not finite at generation step 2 (sequence position 2): NaN at vocabulary index 0; "
            + $"the weights hold NaN or infinite values: {tensor}.\n", error);
    }

    [Fact]
    public void GenerateRefusesNonFiniteLogitsInTheLibraryAndANaNTemperature()
    {
        var lm = LlamaForCausalLM.Load(ModelFolder);
        Array.Fill(lm.LmHead.Weight.Data, float.NaN);
        var e = Assert.Throws<InvalidDataException>(() => lm.Generate([1, 2], 2));
        Assert.Equal("the logits are not finite at generation step 1 (sequence position 1): NaN at vocabulary index 0", e.Message);
        foreach (float t in new[] { float.NaN, float.PositiveInfinity, -1f })
        {
            var bad = Assert.Throws<ArgumentException>(() => lm.Generate([1, 2], 2, new GenerationOptions(Temperature: t)));
            Assert.Contains("temperature must be finite and >= 0", bad.Message);
        }
    }

    [Theory]
    [InlineData("--temperature|NaN", "--temperature must be >= 0 and finite; got NaN.")]
    [InlineData("--temperature|Infinity", "--temperature must be >= 0 and finite; got ")]
    [InlineData("--temperature|-0.5", "--temperature must be >= 0 and finite; got -0.5.")]
    [InlineData("--top-p|0", "--top-p must be in (0, 1]; got 0.")]
    [InlineData("--top-p|NaN", "--top-p must be in (0, 1]; got NaN.")]
    [InlineData("--top-p|1.5", "--top-p must be in (0, 1]; got 1.5.")]
    public void GenerateValidatesTheSamplingParameters(string args, string expected)
    {
        var (code, output, error) = Invoke(["generate", "--model", ModelFolder, "--prompt-tokens", "1", "--max-new-tokens", "2", .. args.Split('|')]);
        Assert.Equal((1, ""), (code, output));
        Assert.Contains(expected, error);
    }

    [Fact]
    public void MergeWarnsAboutNonFiniteTensorsOfTheBase()
    {
        string adapter = System.IO.Path.Combine(folder.Path, "adapter");
        new PeftModel(LlamaForCausalLM.Load(ModelFolder), PeftModelTests.Config("q_proj")).SaveAdapter(adapter);
        Rewrite((name, values, shape) => name == "model.norm.weight" ? [SafeTensor.FromFloat32(name, Poison(values, (0, float.PositiveInfinity)), shape)] : null);
        var (_, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", adapter, "--out", System.IO.Path.Combine(folder.Path, "merged"));
        Assert.StartsWith($"warning: tensor 'model.norm.weight' in {Weights} has 1 +Inf of 64 elements\n", error, StringComparison.Ordinal);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
