// The engine-facing serving layer without HTTP: the incremental detokenizer never splits a UTF-8
// character, stop strings are held back and cut, GenerationStream cancels the engine sequence when its
// consumer stops early, and EngineChatClient maps ChatOptions onto the engine.
using Microsoft.Extensions.AI;
using PeftKernels.Engine;
using PeftKernels.Serving;
using PeftKernels.Text;

namespace PeftKernels.Tests.Server;

public sealed class ServingTests
{
    [Fact]
    public void Detokenizer_NeverSplitsAMultiByteCharacter()
    {
        var tokenizer = new ByteTokenizer();
        const string Text = "héllo € 𝄞 wörld";
        var detokenizer = new IncrementalDetokenizer(tokenizer, tokenizer.Encode("prompt: "));
        var pieces = tokenizer.Encode(Text).Select(detokenizer.Push).ToList();
        pieces.Add(detokenizer.Flush());
        Assert.Equal(Text, string.Concat(pieces));
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD', StringComparison.Ordinal));
        Assert.Contains(pieces, p => p.Length == 0); // the first bytes of '€' and '𝄞' wait for the rest
        Assert.Contains("€", pieces);
    }

    [Fact]
    public void Detokenizer_KeepsSentencePieceLeadingSpacesAndByteFallbackCharacters()
    {
        // Pieces: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, 259 ▁, 260 h, ..., 268 ▁hello (as TokenizerTests builds them).
        var pieces = new List<(string Piece, float Score, int Type)> { ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3) };
        pieces.AddRange(Enumerable.Range(0, 256).Select(b => ($"<0x{b:X2}>", 0f, 6)));
        pieces.AddRange([("▁", -1, 1), ("h", -2, 1), ("e", -3, 1), ("l", -4, 1), ("o", -5, 1), ("he", -6, 1), ("ll", -7, 1), ("hell", -8, 1), ("hello", -9, 1), ("▁hello", -10, 1)]);
        using var folder = new TempFolder();
        File.WriteAllBytes(folder.File("tokenizer.model"), Fuzz.ProtoWriter.SentencePieceModel(pieces, 2, [(35, 1), (40, 0), (41, 1), (42, 2), (43, -1)], [(3, 1), (4, 0), (5, 1)]));
        var tokenizer = HfTokenizer.Load(folder.Path);
        int[] prompt = [1, 268];
        int[] generated = [268, 268, 259, 260, 3 + 0xC3, 3 + 0xA9, 2];
        var detokenizer = new IncrementalDetokenizer(tokenizer, prompt);
        var texts = generated.Select(detokenizer.Push).Append(detokenizer.Flush()).ToList();
        Assert.Equal(" hello hello hé", string.Concat(texts));
        Assert.Equal(" hello", texts[0]); // the leading space of the first generated token survives
        Assert.DoesNotContain(texts, t => t.Contains('\uFFFD', StringComparison.Ordinal));
    }

    [Fact]
    public void Detokenizer_FlushesAnUnfinishedCharacterAtTheEnd()
    {
        var tokenizer = new ByteTokenizer();
        var detokenizer = new IncrementalDetokenizer(tokenizer);
        Assert.Equal("a", detokenizer.Push('a'));
        Assert.Equal("", detokenizer.Push(0xE2)); // first byte of a 3-byte character
        Assert.Equal("\uFFFD", detokenizer.Flush());
    }

    [Fact]
    public void StopStrings_HoldBackAPossibleStartAndCutAtTheFirstMatch()
    {
        var stops = new StopStrings(["END", "xyz"]);
        Assert.Equal("hello ", stops.Push("hello E"));
        Assert.Equal("", stops.Push("N"));
        Assert.Equal("ENter ", stops.Push("ter x"));
        Assert.Equal("", stops.Push("yzzy"));
        Assert.True(stops.Matched);
        Assert.Equal("", stops.Push("more"));

        var none = new StopStrings(["END"]);
        Assert.Equal("the E", none.Push("the E") + none.Flush());
        Assert.Throws<ArgumentException>(() => new StopStrings(["a", "b", "c", "d", "e"]));
        Assert.Throws<ArgumentException>(() => new StopStrings([""]));
    }

    [Fact]
    public async Task GenerationStream_StoppedEarly_CancelsTheSequenceAndFreesItsBlocks()
    {
        using var fixture = new EngineFixture();
        await using var host = new EngineHost(fixture.Engine());
        var engine = host.Engine;
        var tokenizer = new CharTokenizer();
        var request = new GenerationRequest([1, 2, 3], "r8", new SamplingParams(MaxTokens: 200));
        await foreach (var update in GenerationStream.Run(engine, tokenizer, request))
        {
            break; // the consumer leaves after the first piece
        }

        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!(engine.IsIdle && engine.Pool.UsedBlocks == 0))
        {
            Assert.True(DateTime.UtcNow < deadline, "the sequence was not freed");
            await Task.Delay(5);
        }

        Assert.Equal(1, engine.Stats.Finished);
        using var cancel = new CancellationTokenSource();
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => GenerationStream.CompleteAsync(engine, tokenizer, request, cancel.Token));
    }

    [Fact]
    public async Task GenerationStream_EndsAtAStopStringOrAStopToken_WithUsage()
    {
        using var fixture = new EngineFixture();
        await using var host = new EngineHost(fixture.Engine());
        var tokenizer = new CharTokenizer();
        int[] prompt = tokenizer.Encode("stop here");
        int[] greedy = fixture.Greedy(prompt, 30, "r1");
        string full = tokenizer.Decode(greedy);
        string stop = full.Substring(5, 3);
        int cut = full.IndexOf(stop, StringComparison.Ordinal);
        var (text, finish, usage) = await GenerationStream.CompleteAsync(host.Engine, tokenizer, new GenerationRequest(prompt, "r1", new SamplingParams(MaxTokens: 30), [stop]));
        Assert.Equal(full[..cut], text);
        Assert.Equal(GenerationFinish.Stop, finish);
        Assert.Equal(cut + stop.Length, usage.CompletionTokens);
        Assert.Equal(prompt.Length, usage.PromptTokens);

        int stopToken = greedy[4];
        var (untilToken, finish2, usage2) = await GenerationStream.CompleteAsync(host.Engine, tokenizer,
            new GenerationRequest(prompt, "r1", new SamplingParams(StopTokenIds: [stopToken], MaxTokens: 30)));
        int at = Array.IndexOf(greedy, stopToken);
        Assert.Equal(tokenizer.Decode(greedy.AsSpan(0, at)), untilToken);
        Assert.Equal(GenerationFinish.Stop, finish2);
        Assert.Equal(at + 1, usage2.CompletionTokens);
    }

    [Fact]
    public async Task EngineChatClient_MapsOptionsAndStreams()
    {
        using var fixture = new EngineFixture();
        await using var host = new EngineHost(fixture.Engine());
        var tokenizer = new CharTokenizer();
        using IChatClient client = new EngineChatClient(host.Engine, tokenizer, ServerFixture.Render, [], "base");
        List<ChatMessage> messages = [new(ChatRole.System, "terse"), new(ChatRole.User, "hello")];
        string prompt = ServerFixture.Render([new ChatTurn("system", "terse"), new ChatTurn("user", "hello")]);
        foreach (string? model in new[] { null, "base", "r32" })
        {
            var response = await client.GetResponseAsync(messages, new ChatOptions { ModelId = model, MaxOutputTokens = 9, Temperature = 0 });
            Assert.Equal(tokenizer.Decode(fixture.Greedy(tokenizer.Encode(prompt), 9, model == "r32" ? model : null)), response.Text);
            Assert.Equal(ChatFinishReason.Length, response.FinishReason);
            Assert.Equal(9, response.Usage?.OutputTokenCount);
            Assert.Equal(prompt.Length, response.Usage?.InputTokenCount);
        }

        var seeded = new ChatOptions { ModelId = "r1", MaxOutputTokens = 12, Temperature = 1.1f, TopP = 0.9f, TopK = 20, Seed = 7 };
        var once = await client.GetResponseAsync(messages, seeded);
        var streamed = new System.Text.StringBuilder();
        ChatFinishReason? reason = null;
        UsageDetails? usage = null;
        await foreach (var update in client.GetStreamingResponseAsync(messages, seeded))
        {
            streamed.Append(update.Text);
            reason = update.FinishReason ?? reason;
            usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usage;
        }

        Assert.Equal(once.Text, streamed.ToString());
        Assert.Equal(ChatFinishReason.Length, reason);
        Assert.Equal(12, usage?.OutputTokenCount);
        var withStop = seeded.Clone();
        withStop.StopSequences = [once.Text.Substring(2, 2)];
        var stopped = await client.GetResponseAsync(messages, withStop);
        Assert.Equal(once.Text[..once.Text.IndexOf(once.Text.Substring(2, 2), StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        await Assert.ThrowsAsync<KeyNotFoundException>(() => client.GetResponseAsync(messages, new ChatOptions { ModelId = "nope" }));
    }
}
