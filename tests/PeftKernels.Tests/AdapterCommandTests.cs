// `peft merge`, `peft adapters inspect` and the LoRA-FA / LoRA+ options of `peft train`, through
// the same System.CommandLine root the program builds, on a tiny model in a temporary folder.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class AdapterCommandTests : IDisposable
{
    private static readonly int[] Probe = [5, 17, 200, 3, 3, 99, 42];

    private readonly TempFolder folder = new();

    public AdapterCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        AdapterA = SaveAdapter("a", "all-linear", 4, 1);
        AdapterB = SaveAdapter("b", "q_proj,embed_tokens", 2, 2);
    }

    private string ModelFolder { get; }

    private string AdapterA { get; }

    private string AdapterB { get; }

    public void Dispose() => folder.Dispose();

    private string SaveAdapter(string name, string targets, int r, int seed, float poison = 0f)
    {
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model, PeftModelTests.Config(targets, r));
        PeftModelTests.Randomize(model, "default", seed);
        if (poison != 0f)
        {
            Lora.Adapters(model).First().Adapter.A.Data.AsSpan().Fill(poison);
        }

        string dir = Path.Combine(folder.Path, name);
        peft.SaveAdapter(dir);
        return dir;
    }

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Probe).Data;
    }

    /// <summary>Logits of the base in <paramref name="modelDir"/> with the adapters loaded, each update scaled by its weight.</summary>
    private static float[] Unmerged(string modelDir, params (string Dir, float Weight)[] adapters)
    {
        var model = LlamaForCausalLM.Load(modelDir);
        var peft = new PeftModel(model);
        for (int i = 0; i < adapters.Length; i++)
        {
            peft.LoadAdapter(adapters[i].Dir, $"n{i}");
            foreach (var (_, a) in Lora.Adapters(model, $"n{i}"))
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(a.B.Data, adapters[i].Weight, a.B.Data);
            }
        }

        peft.SetAdapter([.. adapters.Select((_, i) => $"n{i}")]);
        return Logits(model);
    }

    [Fact]
    public void MergeWritesAModelWhoseLogitsAreTheAdapters()
    {
        string output = Path.Combine(folder.Path, "merged");
        var (code, text, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterA, "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("merged 1 adapter(s) into 14 module(s)", text);
        Assert.Contains("numerical difference: merged weights differ from W + ΔW (fp32) by max 0 (mean 0); the written model's logits on a 16-token probe differ from the unmerged adapters by max ", text);
        var merged = LlamaForCausalLM.Load(output);
        Assert.DoesNotContain(merged.NamedParameters(), p => p.Name.Contains("lora", StringComparison.Ordinal));
        var expected = Unmerged(ModelFolder, (AdapterA, 1f));

        // fp32 merged weights against fp32 branches: reassociation only, 1e-4 of the logit range.
        TestUtil.AssertClose(Logits(merged), expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "merged model");
    }

    [Fact]
    public void SeveralAdaptersMergeAsTheirWeightedSumAndBf16IsRounded()
    {
        string output = Path.Combine(folder.Path, "weighted");
        var (code, text, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterA, "--adapter", AdapterB, "--weight", "0.5", "--weight", "2",
            "--safe", "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("merged 2 adapter(s) with weights 0.5, 2 into 15 module(s)", text);
        var expected = Unmerged(ModelFolder, (AdapterA, 0.5f), (AdapterB, 2f));
        TestUtil.AssertClose(Logits(LlamaForCausalLM.Load(output)), expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "weighted merge");

        string bf16 = Path.Combine(folder.Path, "bf16");
        Assert.Equal(0, Invoke("merge", "--model", ModelFolder, "--adapter", AdapterA, "--dtype", "bf16", "--out", bf16).Code);
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(bf16, "config.json")));
        Assert.Equal("bfloat16", config.RootElement.GetProperty("torch_dtype").GetString());
        using var file = SafeTensorsFile.Open(Path.Combine(bf16, "model.safetensors"));
        Assert.Equal(SafeTensorDType.BF16, file.GetInfo("model.layers.0.self_attn.q_proj.weight").DType);
    }

    [Fact]
    public void MergingIntoAFourBitBaseStatesTheErrorItIntroduced()
    {
        string quantized = Path.Combine(folder.Path, "nf4"), output = Path.Combine(folder.Path, "merged4");
        Assert.Equal(0, Invoke("quantize", ModelFolder, quantized, "--double-quant").Code);
        var (code, text, error) = Invoke("merge", "--model", quantized, "--adapter", AdapterA, "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("merging into a 4-bit base: 14 4-bit weight(s) dequantized (14 of them merged) and kept as F32", text);
        Assert.Contains("not re-quantized", text);
        Assert.Contains("the written model's logits on a 16-token probe differ from the unmerged adapters by max", text);

        // The QLoRA model (4-bit base + adapter) and the merged fp32 model compute the same function.
        var expected = Unmerged(quantized, (AdapterA, 1f));
        TestUtil.AssertClose(Logits(LlamaForCausalLM.Load(output)), expected, 1e-4 * expected.Max(Math.Abs), 1e-4, "merged 4-bit base");
    }

    [Fact]
    public void InspectPrintsConfigTensorsCountAndSize()
    {
        new PeftModel(LlamaForCausalLM.Load(ModelFolder), PeftModelTests.Config("q_proj"), "other").SaveAdapter(AdapterB, "other");
        var (code, text, error) = Invoke("adapters", "inspect", AdapterB);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("\"peft_type\": \"LORA\"", text);
        Assert.Contains("tensors (6; metadata format=pt):", text);
        Assert.Matches(@"base_model\.model\.model\.embed_tokens\.lora_embedding_A\s+F32\s+\[2, 256\]", text);
        Assert.Matches(@"base_model\.model\.model\.layers\.1\.self_attn\.q_proj\.lora_B\.weight\s+F32\s+\[64, 2\]", text);

        // q_proj: A [2, 64] + B [64, 2] per layer, two layers; embedding A [2, 256] + B [64, 2].
        Assert.Contains("trainable params: 1,152", text);
        Assert.Contains($"file size: {new FileInfo(Path.Combine(AdapterB, Lora.WeightsFile)).Length:N0} bytes", text);
        Assert.Contains("other adapters in subfolders: other", text);
    }

    [Fact]
    public void TrainWithLoraFaKeepsAAndReportsHalfTheParameters()
    {
        string data = folder.File("data.txt"), output = Path.Combine(folder.Path, "fa");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
        var (code, text, error) = Invoke("train", "--model", ModelFolder, "--data", data, "--method", "lora-fa", "--lora-plus-ratio", "4", "--r", "4",
            "--targets", "all-linear", "--steps", "2", "--batch", "2", "--seq", "16", "--lr", "1e-2", "--seed", "3", "--out", output);
        Assert.Equal((0, ""), (code, error));

        // Only B trains: per layer (64 + 32 + 32 + 64 + 176 + 176 + 64)·4, two layers.
        Assert.Contains("trainable params: 4,864 ||", text);
        var fresh = LlamaForCausalLM.Load(ModelFolder);
        new PeftModel(fresh, new LoraConfig { R = 4, LoraAlpha = 32, TargetModules = TargetModules.Parse("all-linear") }, seed: 3);
        var trained = LlamaForCausalLM.Load(ModelFolder);
        new PeftModel(trained).LoadAdapter(output);
        var initial = Lora.Adapters(fresh).ToDictionary(e => e.Module, e => e.Adapter);
        Assert.All(Lora.Adapters(trained), e =>
        {
            Assert.Equal(initial[e.Module].A.Data, e.Adapter.A.Data);
            Assert.NotEqual(initial[e.Module].B.Data, e.Adapter.B.Data);
        });
    }

    [Theory]
    [InlineData("merge|--model|MODEL|--adapter|nowhere|--out|OUT", "nowhere is not a PEFT adapter folder")]
    [InlineData("merge|--model|MODEL|--adapter|A|--adapter|B|--weight|1|--out|OUT", "--weight is given 1 time(s) for 2 --adapter folder(s)")]
    [InlineData("merge|--model|MODEL|--adapter|WRONG|--out|OUT", "does not fit the model")]
    [InlineData("merge|--model|MODEL|--adapter|POISON|--safe|--out|OUT", "safe merge of adapter 'default' into 'model.layers.0.self_attn.q_proj.weight' gives ")]
    [InlineData("merge|--model|MODEL|--adapter|A|--out|MODEL", "is the same path as --model")]
    [InlineData("merge|--model|MODEL|--adapter|A|--dtype|f16|--out|OUT", "f16")]
    [InlineData("adapters|inspect|MODEL", "is not a PEFT adapter folder")]
    [InlineData("train|--model|MODEL|--data|DATA|--lora-plus-ratio|0|--out|OUT", "--lora-plus-ratio must be > 0")]
    public void BadInputExitsNonZeroWithAClearMessageAndWritesNothing(string args, string expected)
    {
        string output = Path.Combine(folder.Path, "out"), data = folder.File("d.txt");
        File.WriteAllText(data, "hello world");
        var replacements = new Dictionary<string, string>
        {
            ["MODEL"] = ModelFolder,
            ["OUT"] = output,
            ["A"] = AdapterA,
            ["B"] = AdapterB,
            ["DATA"] = data,
            ["WRONG"] = args.Contains("WRONG", StringComparison.Ordinal) ? WrongAdapter() : "",
            ["POISON"] = args.Contains("POISON", StringComparison.Ordinal) ? SaveAdapter("poison", "q_proj", 2, 5, float.MaxValue) : "",
        };
        var (code, _, error) = Invoke([.. args.Split('|').Select(a => replacements.GetValueOrDefault(a, a))]);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, error);
        Assert.False(Directory.Exists(output), "a failed command left an output folder");
    }

    private string WrongAdapter()
    {
        string dir = Path.Combine(folder.Path, "wrong");
        // Head dim 8: v_proj is [16, 64] there, [32, 64] in the model.
        var other = LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 8, NumAttentionHeads = 8 });
        new PeftModel(other, PeftModelTests.Config("v_proj")).SaveAdapter(dir);
        return dir;
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
