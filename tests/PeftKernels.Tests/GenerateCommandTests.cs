// `peft generate` on the inference engine, through the same System.CommandLine root the program
// builds, on a tiny model (byte-level tokenizer, vocab 256) with two saved adapters (a randomized
// all-linear LoRA and a randomized IA³): a single prompt gives what the library's Generate gives
// (greedy; seeded sampling as Generate's sampler, TokenSampler, draws it), --top-k 1 is greedy, and
// a requests file runs as one continuous batch whose every line equals that request run alone, in
// input order; every bad line is refused before anything runs, naming the line and the field.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

public sealed class GenerateCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public GenerateCommandTests()
    {
        ModelFolder = folder.File("model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        var lm = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(lm);
        peft.AddAdapter("lora", TinyLlama.Lora("all-linear", r: 4, alpha: 8), seed: 1);
        TinyLlama.Randomize(lm, "lora", 30);
        peft.AddAdapter("ia3", new Ia3Config(), seed: 2);
        int seed = 50;
        foreach (var a in lm.NamedModules().Select(m => m.Module).OfType<Linear>().SelectMany(l => l.Ia3Adapters))
        {
            var noise = TinyLlama.Uniform(a.Features, seed++, 0.5f);
            for (int i = 0; i < noise.Length; i++)
            {
                a.L.Data[i] = 1 + noise[i];
            }
        }

        peft.SaveAdapter(folder.Path, "lora");
        peft.SaveAdapter(folder.Path, "ia3");
    }

    private string ModelFolder { get; }

    private string Lora => folder.File("lora");

    private string Ia3 => folder.File("ia3");

    public void Dispose() => folder.Dispose();

    [Fact]
    public void AGreedyPromptGivesWhatTheLibraryGenerates()
    {
        var tokens = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6,7", "--max-new-tokens", "6", "--threads", "1");
        Assert.Equal((0, ""), (tokens.Code, tokens.Error));
        Assert.Equal(string.Join(",", LlamaForCausalLM.Load(ModelFolder).Generate([5, 6, 7], 6)), tokens.Output.Trim());

        var withAdapter = Invoke("generate", "--model", ModelFolder, "--adapter", Lora, "--prompt", "abc", "--max-new-tokens", "5");
        Assert.Equal((0, ""), (withAdapter.Code, withAdapter.Error));
        var expected = WithAdapter(Lora).Generate([.. "abc"u8.ToArray().Select(b => (int)b)], 5);
        Assert.Equal("abc" + new Text.ByteTokenizer().Decode(expected), withAdapter.Output.TrimEnd('\n'));
        var plain = Invoke("generate", "--model", ModelFolder, "--prompt", "abc", "--max-new-tokens", "5");
        Assert.NotEqual(plain.Output, withAdapter.Output);
    }

    [Fact]
    public void SeededSamplingGivesWhatTheLibrarySamplerDraws()
    {
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--adapter", Ia3, "--prompt-tokens", "9,8,7,6", "--max-new-tokens", "8",
            "--temperature", "1.3", "--top-p", "0.95", "--top-k", "40", "--seed", "17");
        Assert.Equal((0, ""), (code, error));
        var expected = Sampled(WithAdapter(Ia3), [9, 8, 7, 6], new SamplingParams(1.3f, 0.95f, 40, 17, MaxTokens: 8));
        Assert.Equal(string.Join(",", expected), output.Trim());
        var greedy = Invoke("generate", "--model", ModelFolder, "--adapter", Ia3, "--prompt-tokens", "9,8,7,6", "--max-new-tokens", "8");
        Assert.NotEqual(greedy.Output, output);
    }

    [Fact]
    public void TopKOneIsGreedy()
    {
        var greedy = Invoke("generate", "--model", ModelFolder, "--prompt", "hello", "--max-new-tokens", "6");
        var topOne = Invoke("generate", "--model", ModelFolder, "--prompt", "hello", "--max-new-tokens", "6", "--temperature", "2", "--top-k", "1", "--seed", "3");
        var sampled = Invoke("generate", "--model", ModelFolder, "--prompt", "hello", "--max-new-tokens", "6", "--temperature", "2", "--seed", "3");
        Assert.Equal((0, ""), (greedy.Code, greedy.Error));
        Assert.Equal(greedy, topOne);
        Assert.NotEqual(greedy.Output, sampled.Output);
    }

    [Fact]
    public void ARequestsFileRunsAsOneBatchAndEachLineEqualsThatRequestAlone()
    {
        int[] longPrompt = [.. Enumerable.Range(0, 30).Select(i => (i * 37) % 256)];
        int stop = int.Parse(Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "9,9,9", "--max-new-tokens", "3").Output.Split(',')[1],
            System.Globalization.CultureInfo.InvariantCulture);
        string relativeLora = Path.GetRelativePath(Environment.CurrentDirectory, Lora);
        string[] lines =
        [
            """{"prompt": "hello", "max_new_tokens": 5}""",
            $$"""{"prompt_tokens": [5, 6, 7], "adapter": {{Json(relativeLora)}}, "max_new_tokens": 3}""",
            $$"""{"prompt": "abc", "adapter": {{Json(Ia3)}}, "temperature": 0.8, "top_p": 0.9, "seed": 11, "max_new_tokens": 6}""",
            "",
            $$"""{"prompt_tokens": {{Json(longPrompt)}}, "adapter": {{Json(Lora)}}, "temperature": 1.1, "top_k": 5, "seed": 2}""",
            $$"""{"prompt_tokens": [9, 9, 9], "stop_token_ids": [{{stop}}], "max_new_tokens": 8, "adapter": null}""",
            $$"""{"prompt": "hello", "adapter": {{Json(Lora)}}, "max_new_tokens": 7, "temperature": 0.7, "seed": 5}""",
            $$"""{"prompt_tokens": [1, 2], "adapter": {{Json(Ia3)}}, "max_new_tokens": 0}""",
        ];
        string file = folder.File("requests.jsonl");
        File.WriteAllLines(file, lines);
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--requests", file, "--max-new-tokens", "4",
            "--max-running", "3", "--max-batch-tokens", "8", "--threads", "1");
        Assert.Equal((0, ""), (code, error));
        var results = output.TrimEnd('\n').Split('\n').Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(7, results.Count);
        Assert.Equal(Enumerable.Range(0, 7), results.Select(r => r.GetProperty("index").GetInt32()));

        string[][] alone =
        [
            ["--prompt", "hello", "--max-new-tokens", "5"],
            ["--prompt-tokens", "5,6,7", "--adapter", Lora, "--max-new-tokens", "3"],
            ["--prompt", "abc", "--adapter", Ia3, "--temperature", "0.8", "--top-p", "0.9", "--seed", "11", "--max-new-tokens", "6"],
            ["--prompt-tokens", string.Join(",", longPrompt), "--adapter", Lora, "--temperature", "1.1", "--top-k", "5", "--seed", "2", "--max-new-tokens", "4"],
            ["--prompt-tokens", "9,9,9", "--max-new-tokens", "8"],
            ["--prompt", "hello", "--adapter", Lora, "--max-new-tokens", "7", "--temperature", "0.7", "--seed", "5"],
            ["--prompt-tokens", "1,2", "--adapter", Ia3, "--max-new-tokens", "0"],
        ];
        string[] prompts = ["hello", "", "abc", "", "", "hello", ""];
        for (int i = 0; i < alone.Length; i++)
        {
            var single = Invoke(["generate", "--model", ModelFolder, .. alone[i]]);
            Assert.Equal((0, ""), (single.Code, single.Error));
            var r = results[i];
            int[] tokens = [.. r.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32())];
            if (prompts[i].Length > 0)
            {
                Assert.Equal(single.Output.TrimEnd('\n'), prompts[i] + r.GetProperty("text").GetString());
                Assert.Equal(prompts[i].Length, r.GetProperty("prompt_tokens").GetInt32());
            }
            else if (i == 4)
            {
                // The request's stop id (its second greedy token) ends it there; alone, without stop ids, it runs on.
                var all = single.Output.Trim().Split(',').Select(t => int.Parse(t, System.Globalization.CultureInfo.InvariantCulture)).ToList();
                Assert.Equal(all[..(all.IndexOf(stop) + 1)], tokens);
                Assert.Equal("stop", r.GetProperty("finish_reason").GetString());
            }
            else
            {
                Assert.Equal(single.Output.Trim(), string.Join(",", tokens));
                Assert.False(r.TryGetProperty("text", out _));
            }

            Assert.True(r.TryGetProperty("cached_prompt_tokens", out _));
            Assert.False(r.TryGetProperty("error", out _));
        }

        Assert.Equal(["length", "length", "length", "length", "stop", "length", "length"], results.Select(r => r.GetProperty("finish_reason").GetString()));
        Assert.Equal(30, results[3].GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(4, results[3].GetProperty("tokens").GetArrayLength());
        Assert.Equal(0, results[6].GetProperty("tokens").GetArrayLength());
    }

    [Theory]
    [InlineData("not json", "line 2: not valid JSON")]
    [InlineData("[1, 2]", "line 2: expected a JSON object, got [1, 2]")]
    [InlineData("""{"prompt": "a", "prompt_tokens": [1]}""", "line 2: prompt, prompt_tokens: give exactly one of them (both given)")]
    [InlineData("""{"max_new_tokens": 2}""", "line 2: prompt, prompt_tokens: give exactly one of them (neither given)")]
    [InlineData("""{"prompt": "a", "temprature": 1}""", "line 2: unknown field 'temprature' (a request takes prompt, prompt_tokens, adapter,")]
    [InlineData("""{"prompt": "a", "prompt": "b"}""", "line 2: field 'prompt' is given twice")]
    [InlineData("""{"prompt": 5}""", "line 2: prompt: expected a string, got 5")]
    [InlineData("""{"prompt_tokens": "1,2"}""", "line 2: prompt_tokens: expected an array of integer token ids, got \"1,2\"")]
    [InlineData("""{"prompt_tokens": [1, 2.5]}""", "line 2: prompt_tokens: item 1 is 2.5; expected an integer token id")]
    [InlineData("""{"prompt_tokens": [1, 300]}""", "line 2: prompt_tokens: token id 300 at position 1 is outside the vocabulary [0, 256)")]
    [InlineData("""{"prompt_tokens": []}""", "line 2: prompt_tokens: expected at least one token id, got []")]
    [InlineData("""{"prompt": "a", "max_new_tokens": "2"}""", "line 2: max_new_tokens: expected an integer >= 0, got \"2\"")]
    [InlineData("""{"prompt": "a", "max_new_tokens": -1}""", "line 2: max_new_tokens: expected an integer >= 0, got -1")]
    [InlineData("""{"prompt": "a", "temperature": -0.5}""", "line 2: temperature: expected a finite number >= 0, got -0.5")]
    [InlineData("""{"prompt": "a", "top_p": 0}""", "line 2: top_p: expected a number in (0, 1], got 0")]
    [InlineData("""{"prompt": "a", "top_k": true}""", "line 2: top_k: expected an integer >= 0 (0 = off), got true")]
    [InlineData("""{"prompt": "a", "seed": 1e20}""", "line 2: seed: expected a 32-bit integer, got 1e20")]
    [InlineData("""{"prompt": "a", "stop_token_ids": [256]}""", "line 2: stop_token_ids: token id 256 at position 0 is outside the vocabulary [0, 256)")]
    [InlineData("""{"prompt": "a", "adapter": "no-such-adapter"}""", "line 2: adapter: 'no-such-adapter' is not a PEFT adapter folder")]
    [InlineData("""{"prompt": "a", "adapter": 3}""", "line 2: adapter: expected a PEFT adapter folder path (a non-empty string) or null, got 3")]
    public void EveryBadLineIsRefusedBeforeAnythingRunsNamingTheLineAndTheField(string bad, string expected)
    {
        string file = folder.File("bad.jsonl");
        File.WriteAllLines(file, ["""{"prompt_tokens": [1, 2, 3]}""", bad, """{"prompt": "ok"}"""]);
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--requests", file, "--max-new-tokens", "2");
        Assert.Equal((1, ""), (code, output));
        Assert.StartsWith($"error: {file}: 1 bad request: ", error, StringComparison.Ordinal);
        Assert.Contains(expected, error, StringComparison.Ordinal);
        Assert.Single(error.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void AFileWithSeveralProblemsListsThemAllAndLimitsAreChecked()
    {
        string file = folder.File("bad.jsonl");
        File.WriteAllLines(file, ["""{"prompt": "a"}""", "", $$"""{"prompt_tokens": {{Json(Enumerable.Repeat(1, 512).ToArray())}}}""", "{"]);
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--requests", file);
        Assert.Equal((1, ""), (code, output));
        Assert.Contains("3 bad requests: line 1: max_new_tokens: missing, and no --max-new-tokens default was given; ", error, StringComparison.Ordinal);
        Assert.Contains("line 3: prompt_tokens: the prompt has 512 tokens; the model's max_position_embeddings is 512, so at most 511 leave room to generate; line 4: not valid JSON", error, StringComparison.Ordinal);

        var adapter = Directory.CreateDirectory(folder.File("broken-adapter")).FullName;
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), """{"peft_type": "LORA", "r": 0, "target_modules": ["q_proj"]}""");
        File.Copy(Path.Combine(Lora, "adapter_model.safetensors"), Path.Combine(adapter, "adapter_model.safetensors"));
        File.WriteAllLines(file, ["""{"prompt": "a"}""", $$"""{"prompt": "b", "adapter": {{Json(adapter)}}}"""]);
        var broken = Invoke("generate", "--model", ModelFolder, "--requests", file, "--max-new-tokens", "2");
        Assert.Equal((1, ""), (broken.Code, broken.Output));
        Assert.StartsWith($"error: {file}: line 2: adapter: ", broken.Error, StringComparison.Ordinal);

        File.WriteAllLines(file, ["", "  "]);
        Assert.Contains("the file holds no request", Invoke("generate", "--model", ModelFolder, "--requests", file, "--max-new-tokens", "2").Error);
    }

    [Theory]
    [InlineData("--requests|FILE|--prompt|a", "give exactly one of --prompt, --prompt-tokens and --requests")]
    [InlineData("--max-new-tokens|2", "give exactly one of --prompt, --prompt-tokens and --requests")]
    [InlineData("--prompt|a", "--max-new-tokens is required with --prompt and --prompt-tokens")]
    [InlineData("--requests|FILE|--adapter|ADAPTER", "--adapter does not go with --requests: each request names its own adapter folder")]
    [InlineData("--requests|nowhere.jsonl", "--requests: nowhere.jsonl does not exist.")]
    [InlineData("--prompt|a|--max-new-tokens|-1", "--max-new-tokens must be >= 0; got -1.")]
    [InlineData("--prompt|a|--max-new-tokens|1|--top-k|-1", "--top-k must be >= 0 (0 = off); got -1.")]
    [InlineData("--prompt|a|--max-new-tokens|1|--max-running|0", "--max-running must be >= 1; got 0.")]
    [InlineData("--prompt|a|--max-new-tokens|1|--max-running|600", "--max-running (600) must not exceed --max-batch-tokens (512)")]
    public void BadOptionsAreRefusedWithAClearMessage(string args, string expected)
    {
        string file = folder.File("ok.jsonl");
        File.WriteAllLines(file, ["""{"prompt": "a"}"""]);
        var (code, output, error) = Invoke(["generate", "--model", ModelFolder, .. args.Split('|').Select(a => a == "FILE" ? file : a == "ADAPTER" ? Lora : a)]);
        Assert.Equal(1, code);
        Assert.DoesNotContain("\"index\"", output, StringComparison.Ordinal); // nothing ran (a parse error prints the help)
        Assert.Contains(expected, error, StringComparison.Ordinal);
    }

    [Fact]
    public void ARequestWithNonFiniteLogitsCarriesItsErrorAndTheOthersRun()
    {
        var clean = LlamaForCausalLM.Load(ModelFolder);
        int[] fine = clean.Generate([5, 6], 3);
        int poison = Enumerable.Range(10, 200).First(t => !fine.Contains(t));
        Array.Fill(clean.Model.EmbedTokens.Weight.Data, float.NaN, poison * 64, 64);
        string model = folder.File("poisoned");
        clean.Save(model);

        string file = folder.File("nan.jsonl");
        File.WriteAllLines(file, ["""{"prompt_tokens": [5, 6]}""", $$"""{"prompt_tokens": [{{poison}}, 7]}"""]);
        var (code, output, error) = Invoke("generate", "--model", model, "--requests", file, "--max-new-tokens", "3");
        Assert.Equal(1, code);
        var lines = output.TrimEnd('\n').Split('\n').Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(fine, lines[0].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        Assert.Equal("error", lines[1].GetProperty("finish_reason").GetString());
        string message = lines[1].GetProperty("error").GetString()!;
        Assert.StartsWith("the logits are not finite at generation step 1 (sequence position 1): NaN at vocabulary index 0; the weights hold NaN or infinite values: tensor 'model.embed_tokens.weight'", message, StringComparison.Ordinal);
        Assert.StartsWith("warning: tensor 'model.embed_tokens.weight'", error, StringComparison.Ordinal);
        Assert.Contains($"error: 1 of 2 requests failed; the first, index 1 (line 2): {message}\n", error, StringComparison.Ordinal);
    }

    [Fact]
    public void KvCacheBf16RunsTheEngineWithABf16CacheAndOtherValuesAreRefused()
    {
        var bf16 = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6,7", "--max-new-tokens", "6", "--threads", "1", "--kv-cache", "bf16");
        Assert.Equal((0, ""), (bf16.Code, bf16.Error));
        using var engine = new InferenceEngine(LlamaForCausalLM.Load(ModelFolder),
            new EngineOptions { MaxRunningSequences = 1, MaxSequenceLength = 9, Threads = 1, KvCache = KvCacheType.BFloat16 });
        Assert.Equal(KvCacheType.BFloat16, engine.Pool.CacheType);
        var expected = engine.Run([new EngineRequest([5, 6, 7], null, new SamplingParams(MaxTokens: 6))])[0].Tokens;
        Assert.Equal(string.Join(",", expected), bf16.Output.Trim());
        var bad = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6,7", "--max-new-tokens", "6", "--kv-cache", "f16");
        Assert.NotEqual(0, bad.Code);
        Assert.Contains("'f16' not recognized", bad.Error, StringComparison.Ordinal);
        Assert.Contains("'bf16'", bad.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void HelpNamesTheEngineOptionsAndTheGpuFallback()
    {
        var (code, output, _) = Invoke("generate", "--help");
        Assert.Equal(0, code);
        foreach (string fragment in new[] { "--requests <file>", "--top-k <k>", "--integer-decode", "--kv-cache <fp32|bf16>", "--max-running <n>", "--max-batch-tokens <n>", "--device cuda runs the engine's forward on the GPU" })
        {
            Assert.Contains(fragment, output, StringComparison.Ordinal);
        }
    }

    /// <summary>The saved model with the adapter folder loaded and active.</summary>
    private LlamaForCausalLM WithAdapter(string adapter)
    {
        var lm = LlamaForCausalLM.Load(ModelFolder);
        new PeftModel(lm).LoadAdapter(adapter);
        return lm;
    }

    /// <summary>Generate's loop (prefill, then one position per step over a KV cache) with the library's sampler, TokenSampler.</summary>
    private static int[] Sampled(LlamaForCausalLM lm, int[] prompt, SamplingParams sampling)
    {
        using var scope = Tape.NoGrad();
        using var cache = lm.CreateCache(prompt.Length + sampling.MaxTokens);
        var sampler = new TokenSampler(sampling);
        var output = new List<int>();
        var logits = lm.Forward(prompt, 1, cache);
        int vocab = lm.Config.VocabSize;
        while (output.Count < sampling.MaxTokens)
        {
            int next = sampler.Next(logits.Data.AsSpan(logits.Data.Length - vocab, vocab));
            output.Add(next);
            logits = lm.Forward([next], 1, cache);
        }

        return [.. output];
    }

    private static string Json<T>(T value) => JsonSerializer.Serialize(value);

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
