// The `peft demo` verb: options (--device cpu|cuda as the other verbs), the console
// (Spectre.Console over the invocation's output, live progress bars only on an interactive
// terminal) and the runner. A bad --device or --threads, or an --out folder that exists with
// files in it (without --overwrite), fails before anything is written. With --overwrite the demo
// rewrites the same files (base/, adapters/sentiment, adapters/topic, loss.png, metrics.json);
// the base folder keeps no model file of an older base (LlamaForCausalLM.Save).
using System.CommandLine;
using Spectre.Console;

namespace PeftKernels.Cli.Demo;

internal static class DemoCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { HelpName = "dir", Description = "Output folder (base model, adapters, loss.png, metrics.json).", DefaultValueFactory = _ => "./peft-demo" };
        var fast = new Option<bool>("--fast") { Description = "A shorter run (tiny base, fewer steps) for tests and quick looks." };
        var seed = new Option<int>("--seed") { Description = "Seed of the data, the weights and training.", DefaultValueFactory = _ => 0 };
        var threads = OptionChecks.ThreadsOption();
        var device = ModelCommands.DeviceOption();
        var overwrite = OutputPaths.OverwriteOption();
        var methods = new Option<bool>("--methods")
        {
            Description = "Instead of the story: train every PEFT method (LoRA, DoRA, IA³, prompt/P-/prefix tuning, bottleneck, X-LoRA, MixLoRA) on the sentiment task "
                + "and print a table (method, trainable parameters, file size, accuracy, training time); adapters in --out/methods, rows in methods.json.",
        };
        var command = new Command("demo", "The whole story on a small Llama, no downloads: pre-train, fail a task, QLoRA-fine-tune, save, merge, serve two adapters in one batch.")
        {
            output, fast, seed, threads, device, overwrite, methods,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            int threadCount = parse.Threads(threads);
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            OutputPaths.Check("--out", parse.GetRequiredValue(output), OutputKind.Folder, parse.GetValue(overwrite));
            var (console, live) = TrainingView.ConsoleFor(log);
            var runner = new DemoRunner(new DemoOptions(parse.GetRequiredValue(output), parse.GetValue(fast), parse.GetValue(seed), threadCount, on), console, live);
            if (parse.GetValue(methods))
            {
                runner.RunMethods();
            }
            else
            {
                runner.Run();
            }

            return 0;
        }));
        return command;
    }
}
