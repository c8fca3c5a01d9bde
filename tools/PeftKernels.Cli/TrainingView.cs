// Training progress on the console: a live Spectre.Console progress bar (step, loss, tokens/s,
// learning rate, ETA) when stdout is an interactive terminal, else plain lines (about twenty
// per run) so logs and tests get the same facts without control codes.
using System.Globalization;
using PeftKernels.Training;
using Spectre.Console;

namespace PeftKernels.Cli;

internal static class TrainingView
{
    public static void Run(Trainer trainer, TextWriter log, Action<TrainingProgress>? observe = null)
    {
        int total = trainer.Options.Steps;
        bool live = ReferenceEquals(log, Console.Out) && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
        if (!live)
        {
            int every = Math.Max(1, total / 20);
            trainer.Run(new Reporter(p =>
            {
                observe?.Invoke(p);
                if (p.Step % every == 0 || p.Step == total)
                {
                    log.WriteLine(Describe(p));
                }
            }));
            return;
        }

        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: total);
                trainer.Run(new Reporter(p =>
                {
                    observe?.Invoke(p);
                    task.Description = Markup.Escape(Describe(p));
                    task.Value = p.Step;
                }));
            });
    }

    private static string Describe(TrainingProgress p) => string.Create(CultureInfo.InvariantCulture,
        $"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  {p.TokensPerSecond:F0} tok/s  lr {p.LearningRate:E2}  grad-norm {p.GradNorm:F3}  eta {p.Eta:hh\\:mm\\:ss}");

    private sealed class Reporter(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
