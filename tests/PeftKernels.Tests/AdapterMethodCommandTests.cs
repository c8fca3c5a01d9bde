// The IA³ and DoRA methods and weighted combinations in the `peft` tool: `train --method
// ia3|dora`, `merge --combination` (+ --density), merging and inspecting IA³ / DoRA folders,
// through the same System.CommandLine root the program builds, on a tiny model.
using System.CommandLine;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class AdapterMethodCommandTests : IDisposable
{
    private static readonly int[] Probe = [5, 17, 200, 3, 3, 99, 42];

    private readonly TempFolder folder = new();

    public AdapterMethodCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        Data = folder.File("data.txt");
        File.WriteAllText(Data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
    }

    private string ModelFolder { get; }

    private string Data { get; }

    public void Dispose() => folder.Dispose();

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(Probe).Data;
    }

    /// <summary>Saves a random LoRA adapter (targets, rank) or, with <paramref name="ia3"/>, an IA³ one with random vectors.</summary>
    private string SaveAdapter(string name, string targets, int r, int seed, bool ia3 = false)
    {
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model);
        if (ia3)
        {
            peft.AddAdapter("default", new Ia3Config());
            foreach (var (_, module) in model.NamedModules())
            {
                foreach (var a in (module as Linear)?.Ia3Adapters ?? [])
                {
                    TestUtil.Random(a.Features, seed++, 0.5f).Select(v => v + 1f).ToArray().CopyTo(a.L.Data, 0);
                }
            }
        }
        else
        {
            peft.AddAdapter("default", PeftModelTests.Config(targets, r), seed);
            PeftModelTests.Randomize(model, "default", seed);
        }

        string dir = Path.Combine(folder.Path, name);
        peft.SaveAdapter(dir);
        return dir;
    }

    [Fact]
    public void TrainIa3UsesTheLlamaDefaultsOrTheTargetsGiven()
    {
        string output = Path.Combine(folder.Path, "ia3");
        var (code, text, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "ia3", "--steps", "2", "--batch", "2", "--seq", "16",
            "--lr", "5e-2", "--seed", "1", "--out", output);
        Assert.Equal((0, ""), (code, error));

        // Per layer k_proj [32, 1] + v_proj [32, 1] + down_proj [1, 176], two layers.
        Assert.Contains("trainable params: 480 ||", text);
        var config = Ia3Config.Load(Path.Combine(output, Lora.ConfigFile));
        Assert.Equal(new[] { "down_proj", "k_proj", "v_proj" }, config.EffectiveTargets.Names!.Order());
        var trained = LlamaForCausalLM.Load(ModelFolder);
        new PeftModel(trained).LoadAdapter(output);
        Assert.NotEqual(Logits(LlamaForCausalLM.Load(ModelFolder)), Logits(trained));
        Assert.Equal(0, Invoke("score", "--model", ModelFolder, "--adapter", output, "--tokens", "97,98,99,97").Code);

        string targeted = Path.Combine(folder.Path, "ia3-q");
        Assert.Equal(0, Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "ia3", "--targets", "q_proj,down_proj", "--steps", "1",
            "--batch", "1", "--seq", "8", "--out", targeted).Code);
        var custom = Ia3Config.Load(Path.Combine(targeted, Lora.ConfigFile));
        Assert.Equal(new[] { "down_proj", "q_proj" }, custom.EffectiveTargets.Names!.Order());
        Assert.Equal(new[] { "down_proj" }, custom.EffectiveFeedforward.Names);
    }

    [Fact]
    public void TrainDoraSavesMagnitudeVectors()
    {
        string output = Path.Combine(folder.Path, "dora");
        var (code, text, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "dora", "--r", "2", "--targets", "q_proj,v_proj",
            "--steps", "2", "--batch", "2", "--seq", "16", "--lr", "1e-2", "--out", output);
        Assert.Equal((0, ""), (code, error));

        // Per layer q: A [2, 64] + B [64, 2] + m [64] = 320; v: A [2, 64] + B [32, 2] + m [32] = 224; two layers.
        Assert.Contains("trainable params: 1,088 ||", text);
        Assert.True(LoraConfig.Load(Path.Combine(output, Lora.ConfigFile)).UseDora);
        using var file = SafeTensorsFile.Open(Path.Combine(output, Lora.WeightsFile));
        Assert.Equal(new long[] { 32 }, file.GetInfo("base_model.model.model.layers.1.self_attn.v_proj.lora_magnitude_vector").Shape);

        var (inspectCode, inspected, _) = Invoke("adapters", "inspect", output);
        Assert.Equal(0, inspectCode);
        Assert.Contains("method: DoRA (r = 2, lora_alpha = 32, magnitude vectors)", inspected);
    }

    [Fact]
    public void MergeWithACombinationWritesTheCombinedAdapter()
    {
        string a = SaveAdapter("a", "all-linear", 4, 1), b = SaveAdapter("b", "q_proj,embed_tokens", 2, 2);
        string output = Path.Combine(folder.Path, "cat");
        var (code, text, error) = Invoke("merge", "--model", ModelFolder, "--adapter", a, "--adapter", b, "--weight", "0.5", "--weight", "2",
            "--combination", "cat", "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("merged 2 adapter(s) with weights 0.5, 2 combined with cat into one adapter of rank 6 and into 15 module(s)", text);

        // cat is exact: the merged model computes the weighted sum of the two updates.
        var expected = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(expected);
        peft.LoadAdapter(a, "a");
        peft.LoadAdapter(b, "b");
        foreach (var (name, w) in new[] { ("a", 0.5f), ("b", 2f) })
        {
            foreach (var (_, adapter) in Lora.Adapters(expected, name))
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(adapter.B.Data, w, adapter.B.Data);
            }
        }

        peft.SetAdapter("a", "b");
        var unmerged = Logits(expected);
        TestUtil.AssertClose(Logits(LlamaForCausalLM.Load(output)), unmerged, 1e-4 * unmerged.Max(Math.Abs), 1e-4, "cat-merged model");

        string ties = Path.Combine(folder.Path, "ties");
        var tied = Invoke("merge", "--model", ModelFolder, "--adapter", a, "--adapter", a, "--combination", "ties", "--density", "0.5", "--out", ties);
        Assert.Equal((0, ""), (tied.Code, tied.Error));
        Assert.Contains("combined with ties into one adapter of rank 4", tied.Output);
    }

    [Fact]
    public void Ia3AdaptersMergeAndInspect()
    {
        string ia3 = SaveAdapter("ia3", "", 0, 5, ia3: true);
        string output = Path.Combine(folder.Path, "merged");
        var (code, text, error) = Invoke("merge", "--model", ModelFolder, "--adapter", ia3, "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("merged 1 adapter(s) into 6 module(s)", text);
        var model = LlamaForCausalLM.Load(ModelFolder);
        new PeftModel(model).LoadAdapter(ia3);
        var unmerged = Logits(model);
        TestUtil.AssertClose(Logits(LlamaForCausalLM.Load(output)), unmerged, 1e-4 * unmerged.Max(Math.Abs), 1e-4, "IA³-merged model");

        var (inspectCode, inspected, _) = Invoke("adapters", "inspect", ia3);
        Assert.Equal(0, inspectCode);
        Assert.Contains("method: IA³ (output scaling of the targets, input scaling of the feed-forward modules [down_proj])", inspected);
        Assert.Contains("\"peft_type\": \"IA3\"", inspected);
        Assert.Matches(@"base_model\.model\.model\.layers\.0\.mlp\.down_proj\.ia3_l\s+F32\s+\[1, 176\]", inspected);
        Assert.Contains("trainable params: 480", inspected);
    }

    [Theory]
    [InlineData("merge|--model|MODEL|--adapter|A|--density|0.5|--out|OUT", "--density applies to --combination")]
    [InlineData("merge|--model|MODEL|--adapter|A|--adapter|B|--combination|linear|--out|OUT", "needs adapters of equal rank")]
    [InlineData("merge|--model|MODEL|--adapter|A|--adapter|B|--combination|mean|--out|OUT", "unknown combination type 'mean'")]
    [InlineData("merge|--model|MODEL|--adapter|A|--adapter|A|--combination|ties|--out|OUT", "needs a density")]
    [InlineData("merge|--model|MODEL|--adapter|IA3|--weight|2|--out|OUT", "--weight scales LoRA updates")]
    [InlineData("merge|--model|MODEL|--adapter|IA3|--adapter|A|--combination|cat|--out|OUT", "it is IA3")]
    [InlineData("train|--model|MODEL|--data|DATA|--method|ia3|--lora-plus-ratio|4|--out|OUT", "--lora-plus-ratio applies to the LoRA methods")]
    public void BadInputExitsNonZeroWithAClearMessageAndWritesNothing(string args, string expected)
    {
        string output = Path.Combine(folder.Path, "out");
        var replacements = new Dictionary<string, string>
        {
            ["MODEL"] = ModelFolder,
            ["OUT"] = output,
            ["DATA"] = Data,
            ["A"] = args.Contains("|A|", StringComparison.Ordinal) ? SaveAdapter("a", "q_proj", 4, 1) : "",
            ["B"] = args.Contains("|B|", StringComparison.Ordinal) ? SaveAdapter("b", "q_proj", 2, 2) : "",
            ["IA3"] = args.Contains("IA3", StringComparison.Ordinal) ? SaveAdapter("ia3", "", 0, 3, ia3: true) : "",
        };
        var (code, _, error) = Invoke([.. args.Split('|').Select(x => replacements.GetValueOrDefault(x, x))]);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, error);
        Assert.False(Directory.Exists(output), "a failed command left an output folder");
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
