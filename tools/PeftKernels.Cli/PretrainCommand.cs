// `peft pretrain --config tiny|small --data FILE --steps N --out DIR [--device cpu|cuda]`: trains
// every weight of a freshly initialised Llama (seeded) on a text file with the byte-level tokenizer
// (vocab 256), on the CPU or a CUDA GPU (weights, gradients and AdamW moments stay there), and
// saves a Hugging Face folder. Deterministic: the same data, options and seed give the
// same bytes on any machine with the same SIMD path (kernels are bit-identical across thread counts).
using System.CommandLine;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Cli;

internal static class PretrainCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Model size: tiny (hidden 64, 2 layers) or small (hidden 128, 4 layers).", DefaultValueFactory = _ => "tiny" };
        config.AcceptOnlyFromAmong("tiny", "small");
        var data = new Option<string>("--data") { Required = true, HelpName = "file", Description = "Plain text or JSONL with a \"text\" field (byte-level tokens)." };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => 300 };
        var batch = new Option<int>("--batch") { Description = "Sequences per step.", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 64 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (10% linear warm-up, cosine decay to 10%).", DefaultValueFactory = _ => 3e-3 };
        var seed = new Option<int>("--seed") { Description = "Seed of the initial weights and the batches.", DefaultValueFactory = _ => 0 };
        var threads = OptionChecks.ThreadsOption();
        var device = ModelCommands.DeviceOption();
        var output = new Option<string>("--out") { Required = true, HelpName = "dir", Description = "Output Hugging Face model folder." };
        var command = new Command("pretrain", "Pre-train a small Llama from scratch on a text file (byte-level vocabulary) and save it as a Hugging Face folder.")
        {
            config, data, steps, batch, seq, lr, seed, threads, device, output,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            int stepCount = parse.AtLeast(steps, 1), batchSize = parse.AtLeast(batch, 1), seqLength = parse.AtLeast(seq, 1);
            double peak = parse.InRange(lr, 0, double.PositiveInfinity);
            var kernel = new KernelOptions(parse.Threads(threads));
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            var model = Pretrain(parse.GetRequiredValue(config), parse.GetRequiredValue(data), stepCount, batchSize, seqLength, peak, parse.GetValue(seed), kernel, log, on);
            string outDir = parse.GetRequiredValue(output);
            model.Save(outDir);
            log.WriteLine($"saved {model.Config.ParameterCount():N0}-parameter model to {Path.GetFullPath(outDir)}");
            return 0;
        }));
        return command;
    }

    /// <summary>Trains a fresh model on <paramref name="device"/> (default: the CPU); reports progress on <paramref name="log"/>; returns it on the CPU.</summary>
    internal static LlamaForCausalLM Pretrain(string size, string dataPath, int steps, int batch, int seq, double lr, int seed, KernelOptions kernel, TextWriter log,
        Device? device = null, Action<TrainingProgress>? observe = null)
    {
        var tokenizer = new ByteTokenizer();
        var dataset = TextDataset.Load(dataPath, tokenizer);
        var config = size == "small" ? LlamaConfig.Small(tokenizer.VocabSize) : LlamaConfig.Tiny(tokenizer.VocabSize);
        var model = LlamaForCausalLM.Create(config, seed);
        foreach (var (_, p) in model.NamedParameters())
        {
            p.Trainable = true;
        }

        var options = new TrainerOptions
        {
            Steps = steps,
            LearningRate = lr,
            WarmupSteps = Math.Max(1, steps / 10),
            MinLearningRateRatio = 0.1,
            WeightDecay = 0.01,
            Seed = seed,
            Kernel = kernel,
        };
        var on = device ?? Device.Cpu;
        model.To(on);
        var trainer = new Trainer(model, rng => dataset.Batch(batch, seq, rng), batch, options);
        log.WriteLine($"pre-training a {size} Llama ({config.ParameterCount():N0} parameters) on {dataset.Tokens.Length:N0} byte tokens: {steps} steps of {batch}×{seq} on {on}");
        TrainingView.Run(trainer, log, observe);
        model.To(Device.Cpu);
        model.Freeze();
        return model;
    }
}
