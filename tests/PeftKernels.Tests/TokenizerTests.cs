// ByteTokenizer, and HfTokenizer on tokenizer files written by the tests: a GPT-2-style
// byte-level BPE tokenizer.json (ids derived by hand below), a Llama-3-style one (Split regex +
// ByteLevel, merges as pairs, ignore_merges), and a SentencePiece tokenizer.model encoded by
// hand as protobuf (BPE model with byte fallback).
using System.Text;
using System.Text.Json.Nodes;
using PeftKernels.Text;
using Xunit;

namespace PeftKernels.Tests;

public sealed class TokenizerTests : IDisposable
{
    // Merge rank r creates id 256 + r. "hello" → h e l l o → he l l o → he ll o → hell o → hello (259);
    // " hello" is Ġ h e l l o and ends as Ġhello (260). <|endoftext|> is added as special id 261.
    private static readonly string[] Merges = ["h e", "l l", "he ll", "hell o", "Ġ hello"];

    private const string Gpt2PreTokenizer = """{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}""";

    private const string Llama3PreTokenizer = """
        {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
          {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
        """;

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void ByteTokenizerRoundTripsUtf8()
    {
        var tokenizer = new ByteTokenizer();
        const string text = "héllo, wörld — 日本語 🙂\n";

        int[] ids = tokenizer.Encode(text);

        Assert.Equal(Encoding.UTF8.GetBytes(text).Select(b => (int)b), ids);
        Assert.Equal(text, tokenizer.Decode(ids));
        Assert.Equal((256, null, null), (tokenizer.VocabSize, tokenizer.BosId, tokenizer.EosId));
        Assert.Empty(tokenizer.Encode(""));
    }

    [Fact]
    public void ByteTokenizerSpecialIdsAreSkippedAndUnknownIdsOrBadBytesBecomeReplacementChars()
    {
        var tokenizer = new ByteTokenizer(bos: 256, eos: 257);

        Assert.Equal((258, 256, 257), (tokenizer.VocabSize, tokenizer.BosId, tokenizer.EosId));
        Assert.Equal("hi", tokenizer.Decode([256, 'h', 'i', 257]));
        Assert.Equal("a\uFFFDb", tokenizer.Decode(['a', 300, 'b']));
        Assert.Equal("\uFFFDx", tokenizer.Decode([0xC3, 'x']));
        Assert.Equal(301, new ByteTokenizer(eos: 300).VocabSize);
    }

    [Fact]
    public void ByteTokenizerRejectsSpecialIdsInsideTheByteRange()
    {
        Assert.Contains("bos = 10", Assert.Throws<ArgumentException>(() => new ByteTokenizer(bos: 10)).Message);
        Assert.Contains("eos = 255", Assert.Throws<ArgumentException>(() => new ByteTokenizer(eos: 255)).Message);
        Assert.Contains("both 256", Assert.Throws<ArgumentException>(() => new ByteTokenizer(256, 256)).Message);
    }

    [Fact]
    public void Gpt2StyleBpeEncodesToHandDerivedIdsAndDecodesBack()
    {
        WriteBpe(Gpt2PreTokenizer);
        var tokenizer = HfTokenizer.Load(folder.Path);

        Assert.Equal(262, tokenizer.VocabSize);
        Assert.Equal([259, 260, '!'], tokenizer.Encode("hello hello!"));
        // " é" is one pre-token: Ġ (id 32, the space byte) then the UTF-8 bytes C3 A9.
        Assert.Equal([259, 261, 32, 0xC3, 0xA9], tokenizer.Encode("hello<|endoftext|> é"));
        // "  x": \s+(?!\S) takes the first space alone, then " x" is Ġ x with no merge.
        Assert.Equal([260, 32, 32, 'x'], tokenizer.Encode(" hello  x"));
        Assert.Equal("hello hello!", tokenizer.Decode([259, 260, '!']));
        Assert.Equal("hello é", tokenizer.Decode([259, 261, 32, 0xC3, 0xA9]));
        Assert.Equal(["日本語 🙂 hello", ""], new[] { "日本語 🙂 hello", "" }.Select(t => tokenizer.Decode(tokenizer.Encode(t))));
        Assert.Null(tokenizer.BosId);
        Assert.Null(tokenizer.EosId);
    }

    [Fact]
    public void Llama3StyleBpeHonoursIgnoreMergesAndPairMerges()
    {
        // "Ġworld" (262) is in the vocabulary, but no merge builds it: only ignore_merges finds it.
        WriteBpe(Llama3PreTokenizer, pairMerges: true, ignoreMerges: true, extraVocab: "Ġworld");
        var ignoring = HfTokenizer.Load(folder.Path);
        WriteBpe(Llama3PreTokenizer, pairMerges: true, ignoreMerges: false, extraVocab: "Ġworld");
        var merging = HfTokenizer.Load(folder.Path);

        Assert.Equal([259, 262], ignoring.Encode("hello world"));
        Assert.Equal([259, 32, 'w', 'o', 'r', 'l', 'd'], merging.Encode("hello world"));
        Assert.Equal("hello world", ignoring.Decode([259, 262]));
    }

    [Fact]
    public void TokenizerConfigGivesBosAndEos()
    {
        WriteBpe(Gpt2PreTokenizer);
        File.WriteAllText(folder.File("tokenizer_config.json"), """{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": true}}""");

        var tokenizer = HfTokenizer.Load(folder.Path);

        Assert.Equal((261, 261), (tokenizer.BosId, tokenizer.EosId));
    }

    [Fact]
    public void TokenizerConfigNamingAnUnknownTokenIsAnError()
    {
        WriteBpe(Gpt2PreTokenizer);
        string config = folder.File("tokenizer_config.json");
        File.WriteAllText(config, """{"bos_token": "<s>", "eos_token": null}""");

        var e = Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(folder.Path));

        Assert.Equal($"{config}: bos_token \"<s>\" is not a token of the tokenizer.", e.Message);
    }

    [Fact]
    public void SentencePieceModelEncodesWithByteFallbackAndDecodesBack()
    {
        File.WriteAllBytes(folder.File("tokenizer.model"), SentencePieceModel());
        var tokenizer = HfTokenizer.Load(folder.Path);

        // Pieces: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, 259 ▁, 260 h, ..., 268 ▁hello.
        Assert.Equal((269, 1, 2), (tokenizer.VocabSize, tokenizer.BosId, tokenizer.EosId));
        Assert.Equal([268, 268], tokenizer.Encode("hello hello"));
        Assert.Equal([259, 260, 3 + 0xC3, 3 + 0xA9], tokenizer.Encode("hé"));
        Assert.Equal("hello hé", tokenizer.Decode([1, 268, 259, 260, 3 + 0xC3, 3 + 0xA9, 2]));
    }

    [Fact]
    public void SentencePieceModelWinsOverTokenizerJsonAndTakesItsAddedTokens()
    {
        File.WriteAllBytes(folder.File("tokenizer.model"), SentencePieceModel());
        File.WriteAllText(folder.File("tokenizer.json"), """{"added_tokens": [{"id": 269, "content": "<|im_start|>", "special": true}], "model": {"type": "Unigram"}}""");
        File.WriteAllText(folder.File("tokenizer_config.json"), """{"bos_token": null, "eos_token": "<|im_start|>"}""");

        var tokenizer = HfTokenizer.Load(folder.Path);

        Assert.Equal((270, null, 269), (tokenizer.VocabSize, tokenizer.BosId, tokenizer.EosId));
        Assert.Equal([268, 269], tokenizer.Encode("hello<|im_start|>"));
    }

    [Fact]
    public void UnsupportedTokenizerJsonIsNamed()
    {
        File.WriteAllText(folder.File("tokenizer.json"), """{"model": {"type": "Unigram", "vocab": []}}""");
        Assert.Contains("model type \"Unigram\"", Assert.Throws<NotSupportedException>(() => HfTokenizer.Load(folder.Path)).Message);

        // SentencePiece-style BPE (TinyLlama's tokenizer.json): no ByteLevel anywhere, byte_fallback.
        File.WriteAllText(folder.File("tokenizer.json"), """
            {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]}, "pre_tokenizer": null,
             "decoder": {"type": "Sequence", "decoders": []}, "model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}, "merges": []}}
            """);
        Assert.Contains("tokenizer.model", Assert.Throws<NotSupportedException>(() => HfTokenizer.Load(folder.Path)).Message);

        WriteBpe("""{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}""");
        Assert.Contains("add_prefix_space", Assert.Throws<NotSupportedException>(() => HfTokenizer.Load(folder.Path)).Message);
    }

    [Fact]
    public void MissingTokenizerFallsBackToBytesWhenTheVocabularyAllows()
    {
        Assert.Null(HfTokenizer.TryLoad(folder.Path));
        Assert.Contains(folder.Path, Assert.Throws<FileNotFoundException>(() => HfTokenizer.Load(folder.Path)).Message);
        Assert.IsType<ByteTokenizer>(HfTokenizer.ForModel(folder.Path, 300));

        var e = Assert.Throws<ArgumentException>(() => HfTokenizer.ForModel(folder.Path, 100));
        Assert.Contains("256", e.Message);
        Assert.Contains("vocab_size is 100", e.Message);
    }

    [Fact]
    public void ForModelRejectsATokenizerLargerThanTheModelVocabulary()
    {
        WriteBpe(Gpt2PreTokenizer);

        Assert.Equal(262, HfTokenizer.ForModel(folder.Path, 262).VocabSize);
        var e = Assert.Throws<InvalidDataException>(() => HfTokenizer.ForModel(folder.Path, 261));
        Assert.Contains("262 ids", e.Message);
        Assert.Contains("vocab_size 261", e.Message);
    }

    /// <summary>GPT-2's bytes_to_unicode, written out independently of the library.</summary>
    private static char[] ByteChars()
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToHashSet();
        var chars = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            chars[b] = printable.Contains(b) ? (char)b : (char)next++;
        }

        return chars;
    }

    /// <summary>Vocabulary: byte b has id b, merge r has id 256 + r, <paramref name="extraVocab"/> id 262; added: &lt;|endoftext|&gt; 261.</summary>
    private void WriteBpe(string preTokenizer, bool pairMerges = false, bool ignoreMerges = false, string? extraVocab = null)
    {
        var vocab = new JsonObject();
        char[] chars = ByteChars();
        for (int b = 0; b < 256; b++)
        {
            vocab[chars[b].ToString()] = b;
        }

        for (int r = 0; r < Merges.Length; r++)
        {
            vocab[Merges[r].Replace(" ", "")] = 256 + r;
        }

        if (extraVocab is not null)
        {
            vocab[extraVocab] = 262;
        }

        var merges = new JsonArray([.. Merges.Select(m => pairMerges ? (JsonNode)new JsonArray([.. m.Split(' ').Select(p => (JsonNode)p)]) : m)]);
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = JsonNode.Parse("""[{"id": 261, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]"""),
            ["normalizer"] = null,
            ["pre_tokenizer"] = JsonNode.Parse(preTokenizer),
            ["post_processor"] = null,
            ["decoder"] = JsonNode.Parse("""{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}"""),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = ignoreMerges,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
        File.WriteAllText(folder.File("tokenizer.json"), root.ToJsonString());
    }

    /// <summary>
    /// A SentencePiece ModelProto (sentencepiece_model.proto) written field by field: pieces
    /// (1: piece, 2: score, 3: type 1 normal / 2 unknown / 3 control / 6 byte), trainer_spec
    /// (3: model_type 2 = BPE, 4: vocab_size, 35: byte_fallback, 40..43: unk/bos/eos/pad ids),
    /// normalizer_spec (1: name, 3: add_dummy_prefix, 4: remove_extra_whitespaces, 5: escape_whitespaces).
    /// BPE pieces merge by score, highest first.
    /// </summary>
    private static byte[] SentencePieceModel()
    {
        var pieces = new List<(string Piece, float Score, int Type)> { ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3) };
        pieces.AddRange(Enumerable.Range(0, 256).Select(b => ($"<0x{b:X2}>", 0f, 6)));
        pieces.AddRange([("▁", -1, 1), ("h", -2, 1), ("e", -3, 1), ("l", -4, 1), ("o", -5, 1), ("he", -6, 1), ("ll", -7, 1), ("hell", -8, 1), ("hello", -9, 1), ("▁hello", -10, 1)]);
        return Fuzz.ProtoWriter.SentencePieceModel(pieces, 2, [(35, 1), (40, 0), (41, 1), (42, 2), (43, -1)], [(3, 1), (4, 0), (5, 1)]);
    }
}
