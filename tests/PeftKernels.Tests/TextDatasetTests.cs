// TextDataset: .jsonl and plain-text corpora → one token stream with BOS/EOS per document,
// random training windows (deterministic for a seed, labels = next token) and in-order
// evaluation windows, and the errors for bad lines and too-short streams.
using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Text;
using Xunit;

namespace PeftKernels.Tests;

public sealed class TextDatasetTests : IDisposable
{
    private static readonly ByteTokenizer WithSpecials = new(bos: 256, eos: 257);

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void JsonlDocumentsAreWrappedInBosAndEos()
    {
        string path = Write("data.jsonl", "{\"text\": \"ab\"}\n\n{\"text\": \"é\", \"source\": 3}\n");

        var data = TextDataset.Load(path, WithSpecials);

        Assert.Equal([256, 'a', 'b', 257, 256, 0xC3, 0xA9, 257], data.Tokens);
        Assert.Equal(2, data.DocumentCount);
    }

    [Fact]
    public void FileStartingWithABraceIsReadAsJsonLinesWhateverItsExtension()
    {
        string path = Write("data.txt", "\n  {\"text\": \"x\"}\r\n{\"text\": \"y\\nz\"}\r\n");

        var data = TextDataset.Load(path, new ByteTokenizer());

        Assert.Equal(['x', 'y', '\n', 'z'], data.Tokens);
        Assert.Equal(2, data.DocumentCount);
    }

    [Fact]
    public void PlainTextSplitsDocumentsOnBlankLines()
    {
        string path = Write("corpus.txt", "ab\r\ncd\n\n  \n\nef\n");

        var data = TextDataset.Load(path, WithSpecials);

        Assert.Equal([256, 'a', 'b', '\n', 'c', 'd', 257, 256, 'e', 'f', 257], data.Tokens);
        Assert.Equal(2, data.DocumentCount);
    }

    [Theory]
    [InlineData("{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", ":2: the object has no \"text\" field.")]
    [InlineData("{\"text\": \"a\"}\n\n{\"text\": 5}\n", ":3: \"text\" must be a string; it is Number.")]
    [InlineData("{\"text\": \"a\"}\n{\"text\": \n", ":2: not valid JSON")]
    [InlineData("{\"text\": \"a\"}\n[\"a\"]\n", ":2: expected a JSON object")]
    public void BadJsonLineIsNamedByNumber(string content, string expected)
    {
        string path = Write("bad.jsonl", content);

        var e = Assert.Throws<InvalidDataException>(() => TextDataset.Load(path, WithSpecials));

        Assert.StartsWith(path + expected, e.Message);
    }

    [Fact]
    public void BlankFileHasNoDocuments()
    {
        string path = Write("empty.txt", "\n \n");

        var e = Assert.Throws<InvalidDataException>(() => TextDataset.Load(path, WithSpecials));

        Assert.Equal($"{path}: no documents; the file is empty or blank.", e.Message);
    }

    [Fact]
    public void BatchIsDeterministicForASeedAndLabelsAreTheNextTokens()
    {
        var data = new TextDataset([.. Enumerable.Range(0, 100)]);

        var (inputs, labels) = data.Batch(4, 7, new Random(11));
        var again = data.Batch(4, 7, new Random(11));
        var other = data.Batch(4, 7, new Random(12));

        Assert.Equal(inputs, again.Inputs);
        Assert.Equal(labels, again.Labels);
        Assert.NotEqual(inputs, other.Inputs);
        Assert.Equal(28, inputs.Length);
        for (int b = 0; b < 4; b++)
        {
            for (int t = 0; t < 7; t++)
            {
                // Token i of the stream is i, so a window is consecutive integers.
                Assert.Equal(inputs[b * 7] + t, inputs[(b * 7) + t]);
                Assert.Equal(inputs[(b * 7) + t] + 1, labels[(b * 7) + t]);
            }
        }
    }

    [Fact]
    public void PropertyBatchWindowsLieInsideTheStream()
    {
        Prop.ForAll(Gen.Choose(1, 40).Zip(Gen.Choose(1, 5)).Zip(Gen.Choose(0, 1000)).ToArbitrary(), t =>
        {
            var ((length, batch), seed) = t;
            int seq = 1 + (seed % length);
            var data = new TextDataset([.. Enumerable.Range(0, length + 1)]);
            var (inputs, labels) = data.Batch(batch, seq, new Random(seed));
            // Token i is i: each row starts in [0, length − seq] and counts up; labels are inputs + 1.
            for (int b = 0; b < batch; b++)
            {
                Assert.InRange(inputs[b * seq], 0, length - seq);
                Assert.Equal(Enumerable.Range(inputs[b * seq], seq), inputs.Skip(b * seq).Take(seq));
            }

            Assert.Equal(inputs.Select(i => i + 1), labels);
        }).Check(TestUtil.Seeded(100, 3));
    }

    [Fact]
    public void StreamOfExactlySeqPlusOneTokensGivesTheOnlyWindow()
    {
        var data = new TextDataset([5, 6, 7, 8]);

        var (inputs, labels) = data.Batch(2, 3, new Random(1));

        Assert.Equal([5, 6, 7, 5, 6, 7], inputs);
        Assert.Equal([6, 7, 8, 6, 7, 8], labels);
    }

    [Fact]
    public void SequentialWindowsAreInOrderAndTheLastGroupMayBeSmaller()
    {
        var data = new TextDataset([.. Enumerable.Range(0, 11)]);

        var batches = data.Sequential(2, 3).ToList();

        // (11 − 1) / 3 = 3 windows; token 10 is a tail shorter than seq and is not predicted.
        Assert.Equal(2, batches.Count);
        Assert.Equal([0, 1, 2, 3, 4, 5], batches[0].Inputs);
        Assert.Equal([1, 2, 3, 4, 5, 6], batches[0].Labels);
        Assert.Equal([6, 7, 8], batches[1].Inputs);
        Assert.Equal([7, 8, 9], batches[1].Labels);
    }

    [Fact]
    public void TooShortStreamNamesBothLengths()
    {
        var data = new TextDataset([1, 2, 3, 4, 5]);

        var e = Assert.Throws<ArgumentException>(() => data.Batch(1, 5, new Random(1)));
        Assert.Contains("5 tokens", e.Message);
        Assert.Contains("seq + 1 = 6", e.Message);
        // Sequential checks when called, not when first enumerated.
        Assert.Contains("seq + 1 = 6", Assert.Throws<ArgumentException>(() => data.Sequential(1, 5)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => data.Batch(0, 2, new Random(1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => data.Sequential(1, 0));
    }

    private string Write(string name, string content)
    {
        string path = folder.File(name);
        File.WriteAllText(path, content);
        return path;
    }
}
