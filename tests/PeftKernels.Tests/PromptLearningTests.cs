using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Prompt, P- and prefix tuning on the tiny Llama: the forward against the base model run over real tokens (a prompt made of
/// token embeddings is the same as those tokens; a prefix made of the keys / values a cache holds for some tokens is the same
/// as those tokens in front), gradients by finite differences through the whole model, and the hooks (parameters, freeze,
/// base checkpoint, detach).
/// </summary>
public class PromptLearningTests
{
    /// <summary>Grouped-query attention (4 heads, 2 kv heads) with head_dim 8 from the config (not hidden / heads = 16).</summary>
    internal static LlamaConfig Gqa => LlamaConfig.Tiny(40) with { HeadDim = 8 };

    internal static readonly int[] Tokens = [5, 17, 2, 33, 8, 1, 12, 30];

    internal static float[] Logits(LlamaForCausalLM model, int[] tokens, int batch = 1)
    {
        using var scope = Tape.NoGrad();
        return model.Forward(tokens, batch).Data;
    }

    /// <summary>Logits rows [skip, skip + count) of each of <paramref name="batch"/> sequences of <paramref name="rows"/> rows.</summary>
    internal static float[] Rows(float[] logits, int batch, int rows, int skip, int count, int vocab)
    {
        var result = new List<float>();
        for (int b = 0; b < batch; b++)
        {
            result.AddRange(logits.AsSpan(((b * rows) + skip) * vocab, count * vocab).ToArray());
        }

        return [.. result];
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void APromptOfTokenEmbeddingsEqualsThoseTokensInFront(bool gqaHeadDim)
    {
        var model = LlamaForCausalLM.Create(gqaHeadDim ? Gqa : LlamaConfig.Tiny(40), 3);
        int[] text = [3, 9, 4];
        var config = new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 5, PromptTuningInit = PromptTuningInit.Text, PromptTuningInitText = "x" };
        var adapter = PromptLearningAdapter.Attach(model, config, 1, text);
        int[] prompt = [3, 9, 4, 3, 9];
        int t = 4, vocab = model.Config.VocabSize;
        var tuned = Logits(model, Tokens, 2);
        adapter.Detach();
        int[] both = [.. prompt, .. Tokens[..t], .. prompt, .. Tokens[t..]];
        var expected = Rows(Logits(model, both, 2), 2, 5 + t, 5, t, vocab);
        TestUtil.AssertClose(tuned, expected, 1e-4, 1e-4, "prompt-tuned logits");
        Assert.Equal(2 * t * vocab, tuned.Length);
    }

    [Fact]
    public void APrefixOfCachedKeysAndValuesEqualsThoseTokensInFrontUnderGqa()
    {
        var model = LlamaForCausalLM.Create(Gqa, 4);
        int[] prefixTokens = [7, 21, 3];
        int n = prefixTokens.Length, t = 4, vocab = model.Config.VocabSize, layers = model.Config.NumHiddenLayers;
        int kvDim = model.Config.NumKeyValueHeads * model.Config.HeadDim;

        // The cache of the base model over the prefix tokens: keys (already rotated at positions 0..n−1) and values.
        var table = new float[n * 2 * layers * kvDim];
        using (Tape.NoGrad())
        {
            using var cache = model.CreateCache(n);
            model.Forward(prefixTokens, 1, cache);
            for (int l = 0; l < layers; l++)
            {
                for (int r = 0; r < n; r++)
                {
                    cache.Keys(l, 0).AsSpan(r * kvDim, kvDim).CopyTo(table.AsSpan((r * 2 * layers * kvDim) + (2 * l * kvDim)));
                    cache.Values(l, 0).AsSpan(r * kvDim, kvDim).CopyTo(table.AsSpan((r * 2 * layers * kvDim) + (((2 * l) + 1) * kvDim)));
                }
            }
        }

        var expected = Rows(Logits(model, [.. prefixTokens, .. Tokens[..t], .. prefixTokens, .. Tokens[t..]], 2), 2, n + t, n, t, vocab);
        using var temp = new TempFolder();
        string folder = temp.Path;
        WriteFolder(folder, model, PromptLearningConfig.PrefixTuningType, n, table, [n, 2 * layers * kvDim]);
        var adapter = PromptLearningAdapter.Load(model, folder);
        Assert.Equal(kvDim, adapter.Config.TokenDim);
        TestUtil.AssertClose(Logits(model, Tokens, 2), expected, 1e-4, 1e-4, "prefix-tuned logits");
    }

    [Fact]
    public void PTuningGradientsThroughTheModelMatchFiniteDifferences()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 5);
        var config = new PromptLearningConfig(PromptLearningConfig.PTuningType) { NumVirtualTokens = 2, EncoderHiddenSize = 3 };
        var adapter = PromptLearningAdapter.Attach(model, config, 2);
        Assert.Equal(4, adapter.NamedParameters().Count() - 3);
        AutogradTests.Check(() => model.Forward([4, 9, 1], 1), [.. model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (p.Name, p.Parameter))]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PrefixGradientsThroughTheModelMatchFiniteDifferences(bool projection)
    {
        var model = LlamaForCausalLM.Create(Gqa, 6);
        var config = new PromptLearningConfig(PromptLearningConfig.PrefixTuningType) { NumVirtualTokens = 2, PrefixProjection = projection, EncoderHiddenSize = 3 };
        PromptLearningAdapter.Attach(model, config, 3);
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).ToList();
        Assert.All(trainable, p => Assert.StartsWith("prompt_encoder.", p.Name, StringComparison.Ordinal));
        Assert.Equal(projection ? 5 : 1, trainable.Count);
        AutogradTests.Check(() => model.Forward([4, 9, 1, 2], 2), [.. trainable.Select(p => (p.Name, p.Parameter))]);
    }

    [Fact]
    public void AttachFreezesTheBaseAndTheBaseCheckpointLeavesTheAdapterOut()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 7);
        int baseCount = model.NamedParameters().Count();
        var adapter = PromptLearningAdapter.Attach(model, new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 3 });
        Assert.Equal(baseCount + 1, model.NamedParameters().Count());
        Assert.Equal(["prompt_encoder.embedding.weight"], model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Name));
        Assert.Equal(3, model.VirtualTokens);
        Assert.False(adapter.CanMerge);
        using var temp = new TempFolder();
        string folder = temp.File("base");
        model.Save(folder);
        using (var file = IO.SafeTensorsFile.Open(Directory.GetFiles(folder, "*.safetensors").Single()))
        {
            Assert.DoesNotContain(file.Names, n => n.Contains("prompt_encoder", StringComparison.Ordinal));
        }

        var before = Logits(model, Tokens);
        adapter.Detach();
        Assert.Equal(0, model.VirtualTokens);
        Assert.Equal(baseCount, model.NamedParameters().Count());
        Assert.NotEqual(before, Logits(model, Tokens));
        Assert.Contains("already has a prompt adapter", Assert.Throws<NotSupportedException>(() =>
        {
            PromptLearningAdapter.Attach(model, new PromptLearningConfig(PromptLearningConfig.PromptTuningType));
            PromptLearningAdapter.Attach(model, new PromptLearningConfig(PromptLearningConfig.PromptTuningType));
        }).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LstmAndDropoutAreRefusedForTraining()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 8);
        var lstm = new PromptLearningConfig(PromptLearningConfig.PTuningType) { EncoderReparameterizationType = "LSTM" };
        Assert.Contains("only the MLP encoder", Assert.Throws<NotSupportedException>(() => PromptLearningAdapter.Attach(model, lstm)).Message, StringComparison.Ordinal);
        var dropout = new PromptLearningConfig(PromptLearningConfig.PTuningType) { EncoderDropout = 0.1 };
        Assert.Contains("encoder_dropout", Assert.Throws<NotSupportedException>(() => PromptLearningAdapter.Attach(model, dropout)).Message, StringComparison.Ordinal);
        var text = new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { PromptTuningInit = PromptTuningInit.Text };
        Assert.Contains("prompt_tuning_init_text", Assert.Throws<ArgumentException>(() => PromptLearningAdapter.Attach(model, text)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SampleVocabInitTakesRowsOfTheEmbeddingTable()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), 9);
        var adapter = PromptLearningAdapter.Attach(model, new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 4, PromptTuningInit = PromptTuningInit.SampleVocab }, 5);
        var rows = adapter.PromptEmbeddings();
        var table = model.Model.EmbedTokens.Weight.Data;
        int h = model.Config.HiddenSize;
        for (int r = 0; r < 4; r++)
        {
            var row = rows.AsSpan(r * h, h).ToArray();
            Assert.Contains(Enumerable.Range(0, 40), v => table.AsSpan(v * h, h).SequenceEqual(row));
        }
    }

    internal static void WriteFolder(string folder, LlamaForCausalLM model, string type, int n, float[] rows, long[] shape)
    {
        var config = PromptLearningAdapter.WithModelFields(model, new PromptLearningConfig(type) { NumVirtualTokens = n });
        Directory.CreateDirectory(folder);
        IO.SafeTensorsWriter.Write(Path.Combine(folder, Lora.WeightsFile), [IO.SafeTensor.FromFloat32(PromptLearningAdapter.TensorName, rows, shape)]);
        config.Save(Path.Combine(folder, Lora.ConfigFile));
    }
}
