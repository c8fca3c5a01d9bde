// `peft pretrain --config tiny|small|base --data FILE --steps N --out DIR [--device cpu|cuda]`: trains
// every weight of a freshly initialised Llama (seeded) on a text file with the byte-level tokenizer
// (vocab 256), on the CPU or a CUDA GPU (weights, gradients and AdamW moments stay there), and
// saves a Hugging Face folder. Deterministic: the same data, options and seed give the
// same bytes on any machine with the same SIMD path (kernels are bit-identical across thread counts),
// and a run resumed from a --save-every checkpoint (--resume) the same bytes as one never stopped.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Text;
using PeftKernels.Training;

namespace PeftKernels.Cli;

internal static class PretrainCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "Model size: tiny (hidden 64, 2 layers), small (hidden 128, 4 layers) or base (the ~125M Llama's layers: hidden 768, 12 layers, 12 heads, intermediate 2048; byte vocabulary).", DefaultValueFactory = _ => "tiny" };
        config.AcceptOnlyFromAmong("tiny", "small", "base");
        var data = new Option<string>("--data") { Required = true, HelpName = "file", Description = "Plain text or JSONL with a \"text\" field (byte-level tokens)." };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => 300 };
        var batch = new Option<int>("--batch") { Description = "Sequences per step.", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 64 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (10% linear warm-up, cosine decay to 10%).", DefaultValueFactory = _ => 3e-3 };
        var seed = new Option<int>("--seed") { Description = "Seed of the initial weights and the batches.", DefaultValueFactory = _ => 0 };
        var threads = OptionChecks.ThreadsOption();
        var device = ModelCommands.DeviceOption();
        var compute = ComputeOption.Create();
        var output = new Option<string>("--out") { Required = true, HelpName = "dir", Description = "Output Hugging Face model folder (and its checkpoints)." };
        var run = new TrainingRun();
        var distributed = new DistributedRun();
        var command = new Command("pretrain", "Pre-train a small Llama from scratch on a text file (byte-level vocabulary) and save it as a Hugging Face folder.")
        {
            config, data, steps, batch, seq, lr, seed, threads, device, compute, output,
        };
        foreach (var option in run.Options.Concat(distributed.Options))
        {
            command.Options.Add(option);
        }

        command.SetAction(parse => distributed.Guard(parse, log =>
        {
            int stepCount = parse.AtLeast(steps, 1), batchSize = parse.AtLeast(batch, 1), seqLength = parse.AtLeast(seq, 1);
            double peak = parse.InRange(lr, 0, float.MaxValue);
            var kernel = new KernelOptions(parse.Threads(threads)) { Compute = parse.Compute(compute, device) };
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            string size = parse.GetRequiredValue(config);
            var tokenizer = new ByteTokenizer();
            var modelConfig = size switch
            {
                "small" => LlamaConfig.Small(tokenizer.VocabSize),
                "base" => LlamaConfig.Llama125M() with { VocabSize = tokenizer.VocabSize },
                _ => LlamaConfig.Tiny(tokenizer.VocabSize),
            };
            if (seqLength > modelConfig.MaxPositionEmbeddings)
            {
                throw new ArgumentException($"--seq must be at most {modelConfig.MaxPositionEmbeddings} (max_position_embeddings of the {size} config); got {seqLength}.");
            }

            string dataPath = parse.GetRequiredValue(data);
            TrainingRun.CheckReadableFile("--data", dataPath);
            int seedValue = parse.GetValue(seed);
            var args = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["verb"] = "pretrain",
                ["--config"] = size,
                ["--data"] = "sha256:" + TrainingRun.Sha256(dataPath),
                ["--steps"] = stepCount.ToString(CultureInfo.InvariantCulture),
                ["--batch"] = batchSize.ToString(CultureInfo.InvariantCulture),
                ["--seq"] = seqLength.ToString(CultureInfo.InvariantCulture),
                ["--lr"] = TrainingRun.Arg(peak),
                ["--seed"] = seedValue.ToString(CultureInfo.InvariantCulture),
            };
            var dataParallel = distributed.Start(parse, batchSize, parse.GetRequiredValue(device), args);
            log = distributed.Log(log);
            run.Check(parse, "--out", parse.GetRequiredValue(output), args, ("--data", dataPath));

            var dataset = TextDataset.Load(dataPath, tokenizer);
            if (dataset.Tokens.Length < seqLength + 1)
            {
                throw new ArgumentException($"--data has {dataset.Tokens.Length} tokens; --seq {seqLength} needs at least {seqLength + 1}.");
            }

            var model = LlamaForCausalLM.Create(modelConfig, seedValue);
            foreach (var (_, p) in model.NamedParameters())
            {
                p.Trainable = true;
            }

            var options = run.Apply(parse, new TrainerOptions
            {
                Steps = stepCount,
                LearningRate = peak,
                WarmupSteps = Math.Max(1, stepCount / 10),
                MinLearningRateRatio = 0.1,
                WeightDecay = 0.01,
                Seed = seedValue,
                Kernel = kernel,
                DataParallel = dataParallel,
            });
            model.To(on);
            var trainer = new Trainer(model, rng => dataset.Batch(batchSize, seqLength, rng), batchSize, options);
            log.WriteLine($"pre-training a {size} Llama ({modelConfig.ParameterCount():N0} parameters) on {dataset.Tokens.Length:N0} byte tokens: {stepCount} steps of {batchSize}×{seqLength} on {on}");
            if (dataParallel != null)
            {
                log.WriteLine(distributed.Describe(batchSize, dataParallel.Shards));
            }

            run.Run(trainer, log, model.Save, () =>
            {
                model.To(Device.Cpu);
                model.Freeze();
            }, distributed.Writes);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"saved {modelConfig.ParameterCount():N0}-parameter model to {run.OutFolder}; final loss {trainer.LastFiniteLoss:F4}{TrainingRun.Skipped(trainer)}"));
            return 0;
        }));
        return command;
    }
}
