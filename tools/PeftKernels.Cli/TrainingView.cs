// Training progress on the console: a live Spectre.Console progress bar (step, loss, tokens/s,
// learning rate, ETA) when stdout is an interactive terminal, else plain lines (a fixed number
// per run, plus one per skipped non-finite step) so logs and tests get the same facts without
// control codes. Every verb that trains
// (train, pretrain, demo) goes through here.
using System.Globalization;
using PeftKernels.Training;
using Spectre.Console;

namespace PeftKernels.Cli;

internal static class TrainingView
{
    /// <summary>The console for a verb's output: the live terminal when the output is stdout on an interactive terminal, else plain text on <paramref name="log"/>.</summary>
    public static (IAnsiConsole Console, bool Live) ConsoleFor(TextWriter log)
    {
        bool live = ReferenceEquals(log, Console.Out) && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
        if (live)
        {
            return (AnsiConsole.Console, true);
        }

        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(log),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 120;
        return (console, false);
    }

    /// <summary>Runs the trainer with progress on <paramref name="log"/> (about twenty plain lines when not live).</summary>
    public static void Run(Trainer trainer, TextWriter log, Action<TrainingProgress>? observe = null)
    {
        var (console, live) = ConsoleFor(log);
        Run(trainer, console, live, "training", lines: 20, indent: "", observe);
    }

    /// <summary>Runs the trainer with a live bar named <paramref name="name"/>, or <paramref name="lines"/> plain lines prefixed by <paramref name="indent"/>.</summary>
    public static void Run(Trainer trainer, IAnsiConsole console, bool live, string name, int lines, string indent, Action<TrainingProgress>? observe = null)
    {
        int total = trainer.Options.Steps;
        if (!live)
        {
            int every = Math.Max(1, total / lines);
            trainer.Run(new ProgressCallback<TrainingProgress>(p =>
            {
                observe?.Invoke(p);
                if (p.Step % every == 0 || p.Step == total || p.Skipped)
                {
                    console.WriteLine(indent + Describe(p));
                }
            }));
            return;
        }

        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(name, maxValue: total);
                trainer.Run(new ProgressCallback<TrainingProgress>(p =>
                {
                    observe?.Invoke(p);
                    task.Description = Markup.Escape($"{name}: {Describe(p)}");
                    task.Value = p.Step;
                }));
            });
    }

    private static string Describe(TrainingProgress p) => p.Skipped
        ? string.Create(CultureInfo.InvariantCulture,
            $"step {p.Step}/{p.TotalSteps}  skipped: {(double.IsFinite(p.Loss) ? "grad-norm" : "loss")} {(double.IsFinite(p.Loss) ? p.GradNorm : p.Loss)} is not finite; no update ({p.SkippedSteps} skipped so far)")
        : string.Create(CultureInfo.InvariantCulture,
        $"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  {p.TokensPerSecond:F0} tok/s  lr {p.LearningRate:E2}  grad-norm {p.GradNorm:F3}  eta {p.Eta:hh\\:mm\\:ss}");
}
