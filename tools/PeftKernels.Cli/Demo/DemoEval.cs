// Greedy answers for a batch of task prompts: all prompts are left-padded to the same width,
// so one forward pass serves every row (each row with its own adapter when names are given);
// the rows grow one byte per step until every row has produced its newline (at most 6 bytes).
using PeftKernels.Autograd;
using PeftKernels.Models;

namespace PeftKernels.Cli.Demo;

internal static class DemoEval
{
    /// <summary>The answer of each example (text up to the first newline).</summary>
    public static string[] Answers(Func<int[], int, Tensor> forward, IReadOnlyList<DemoExample> examples, int maxBytes = 6)
    {
        int batch = examples.Count;
        var rows = examples.Select(e => e.PaddedPrompt.Select(c => (int)c).ToList()).ToList();
        var answers = new System.Text.StringBuilder[batch];
        var done = new bool[batch];
        for (int i = 0; i < batch; i++)
        {
            answers[i] = new System.Text.StringBuilder();
        }

        using var scope = Tape.NoGrad();
        for (int step = 0; step < maxBytes && !done.All(d => d); step++)
        {
            int t = rows[0].Count;
            var logits = forward([.. rows.SelectMany(r => r)], batch);
            int vocab = logits.Columns;
            for (int i = 0; i < batch; i++)
            {
                int next = LlamaForCausalLM.ArgMax(logits.Data.AsSpan((((i * t) + t - 1) * vocab), vocab));
                rows[i].Add(next);
                if (!done[i])
                {
                    if (next == '\n')
                    {
                        done[i] = true;
                    }
                    else
                    {
                        answers[i].Append(next is >= 32 and < 127 ? (char)next : '?');
                    }
                }
            }
        }

        return [.. answers.Select(a => a.ToString())];
    }

    /// <summary>Fraction of examples whose answer equals the label.</summary>
    public static double Accuracy(IReadOnlyList<DemoExample> examples, IReadOnlyList<string> answers) =>
        examples.Zip(answers).Count(p => p.First.Label == p.Second) / (double)examples.Count;
}
