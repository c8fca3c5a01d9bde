// The demo's synthetic world, generated from a seed so every run sees the same data:
//   corpus     plain sentences over a small vocabulary of English words (pre-training text);
//   sentiment  "review: <words> => pos|neg": the label is the polarity of the sentiment words;
//   topic      "topic: <words> => sport|food|tech": the label is the topic of the content words.
// The base model learns the words from the corpus but never sees the "… => label" format, so
// it fails both tasks until an adapter teaches it. Every prompt is left-padded with spaces to
// PromptWidth bytes, so prompts of any task line up and a mixed batch needs no attention mask;
// one example per row; only the label characters (and the closing newline) carry a loss.
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Cli.Demo;

/// <summary>One labelled example: the prompt (ending in "=> ") and the answer (label + newline).</summary>
internal sealed record DemoExample(string Prompt, string Answer)
{
    public string Label => Answer.TrimEnd('\n');

    /// <summary>The prompt left-padded to <see cref="DemoTask.PromptWidth"/>.</summary>
    public string PaddedPrompt => Prompt.PadLeft(DemoTask.PromptWidth);
}

/// <summary>A classification task in the "<kind>: words => label" format.</summary>
internal sealed class DemoTask
{
    private static readonly string[] Filler = ["the", "a", "was", "and", "very", "really", "so", "with", "this", "that", "it", "is"];

    /// <summary>Bytes of every (left-padded) prompt.</summary>
    public const int PromptWidth = 64;

    /// <summary>Tokens per training row: the prompt and the longest answer.</summary>
    public const int RowLength = PromptWidth + 6;

    private readonly string kind;
    private readonly (string Label, string[] Words)[] classes;

    private DemoTask(string name, string kind, params (string Label, string[] Words)[] classes)
    {
        Name = name;
        this.kind = kind;
        this.classes = classes;
    }

    public string Name { get; }

    public IReadOnlyList<string> Labels => [.. classes.Select(c => c.Label)];

    public static DemoTask Sentiment { get; } = new("sentiment", "review",
        ("pos", ["great", "good", "fun", "lovely", "superb", "happy", "brilliant", "nice", "moving", "charming"]),
        ("neg", ["bad", "awful", "boring", "dull", "poor", "sad", "terrible", "weak", "messy", "slow"]));

    public static DemoTask Topic { get; } = new("topic", "topic",
        ("sport", ["goal", "match", "team", "score", "coach", "race", "player", "league"]),
        ("food", ["pasta", "bread", "soup", "cheese", "salad", "pizza", "recipe", "sauce"]),
        ("tech", ["code", "chip", "laptop", "server", "robot", "phone", "network", "software"]));

    /// <summary>Content words shared by the corpus and the tasks, so the base knows them.</summary>
    public static IEnumerable<string> AllWords => Sentiment.classes.Concat(Topic.classes).SelectMany(c => c.Words).Concat(Filler);

    public DemoExample Example(Random rng)
    {
        while (true)
        {
            var e = Draw(rng);
            if (e.Prompt.Length <= PromptWidth)
            {
                return e;
            }
        }
    }

    private DemoExample Draw(Random rng)
    {
        var (label, words) = classes[rng.Next(classes.Length)];
        int count = rng.Next(3, 6);
        int keyed = rng.Next(1, 3);
        var text = new List<string>();
        for (int i = 0; i < count; i++)
        {
            text.Add(Filler[rng.Next(Filler.Length)]);
        }

        for (int i = 0; i < keyed; i++)
        {
            text.Insert(rng.Next(text.Count + 1), words[rng.Next(words.Length)]);
        }

        return new DemoExample($"{kind}: {string.Join(' ', text)} => ", label + "\n");
    }

    public List<DemoExample> Examples(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => Example(rng))];
    }

    /// <summary>One example per row of <see cref="RowLength"/> tokens (padded prompt, answer, spaces); loss only on the answer.</summary>
    public (int[] Inputs, int[] Labels) Batch(Random rng, int batch)
    {
        const int seq = RowLength;
        var inputs = new int[batch * seq];
        var labels = new int[batch * seq];
        for (int b = 0; b < batch; b++)
        {
            var e = Example(rng);
            string text = (e.PaddedPrompt + e.Answer).PadRight(seq + 1);
            for (int t = 0; t < seq; t++)
            {
                inputs[(b * seq) + t] = text[t];
                bool answer = t + 1 >= PromptWidth && t + 1 < PromptWidth + e.Answer.Length;
                labels[(b * seq) + t] = answer ? text[t + 1] : Functional.IgnoreIndex;
            }
        }

        return (inputs, labels);
    }

    /// <summary>Pre-training text: sentences over the same words, never in the task format.</summary>
    public static string Corpus(int sentences, int seed)
    {
        var rng = new Random(seed);
        string[] words = [.. AllWords.Distinct()];
        string[] openers = ["i think", "we saw", "they said", "you know", "she made", "he wrote"];
        var lines = new List<string>();
        for (int i = 0; i < sentences; i++)
        {
            int count = rng.Next(4, 10);
            // Some lines start indented, as the left-padded task prompts do.
            lines.Add(new string(' ', rng.Next(3) == 0 ? rng.Next(1, 40) : 0) + openers[rng.Next(openers.Length)] + " " + string.Join(' ', Enumerable.Range(0, count).Select(_ => words[rng.Next(words.Length)])) + ".");
        }

        return string.Join('\n', lines) + "\n";
    }
}
