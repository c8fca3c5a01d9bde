// Non-finite numbers are never silent: a diverged training step stops the Trainer (and `peft
// train` / `peft pretrain`) naming the step, before the update and before anything is saved; `peft
// score` and `peft generate` refuse logits that hold NaN, naming the first such row.
using System.CommandLine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Diverged training stops naming the step and saves nothing; score and generate refuse non-finite logits.</summary>
public sealed class NonFiniteTrainingTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>A tiny model folder whose lm_head weight holds one NaN (row 0: the logit of vocabulary index 0).</summary>
    private string NanHeadModel()
    {
        string path = System.IO.Path.Combine(folder.Path, "nan-model");
        var lm = LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f);
        lm.LmHead.Weight.Data[7] = float.NaN;
        lm.Save(path);
        return path;
    }

    private static (int[] Inputs, int[] Labels) Batch(Random rng)
    {
        var inputs = new int[2 * 8];
        for (int i = 0; i < inputs.Length; i++)
        {
            inputs[i] = rng.Next(40);
        }

        return (inputs, [.. inputs.Select(x => (x + 1) % 40)]);
    }

    [Fact]
    public void TrainerStopsAtTheFirstNonFiniteLossWithoutUpdatingTheParameters()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
        Lora.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8 }, seed: 2);
        var trainer = new Trainer(model, Batch, 2, new TrainerOptions { Steps = 5, LearningRate = 1e-2, Seed = 1 });
        trainer.Run(untilStep: 2);
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Parameter).ToList();
        var before = trainable.Select(p => p.Data.ToArray()).ToList();

        Array.Fill(model.LmHead.Weight.Data, float.NaN);
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.Run());
        Assert.Equal(3, e.Step);
        Assert.True(double.IsNaN(e.Loss));
        Assert.Equal("training diverged at step 3: loss NaN", e.Message);
        Assert.Equal(2, trainer.Step);
        for (int i = 0; i < trainable.Count; i++)
        {
            Assert.Equal(before[i], trainable[i].Data);
        }
    }

    [Fact]
    public void TrainOnANanBaseFailsNamingTheStepAndWritesNoAdapter()
    {
        string model = NanHeadModel();
        string data = folder.File("data.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 20).Select(i => $"abcabc {i} abcabc")));
        string adapter = System.IO.Path.Combine(folder.Path, "adapter");
        var (code, _, error) = Invoke("train", "--model", model, "--data", data, "--r", "4", "--steps", "3", "--batch", "2", "--seq", "8", "--out", adapter);
        Assert.Equal(1, code);
        Assert.Equal($"warning: tensor 'lm_head.weight' in {System.IO.Path.Combine(model, "model.safetensors")} has 1 NaN of 16384 elements\n"
            + "error: training diverged at step 1: loss NaN\n", error);
        Assert.False(Directory.Exists(adapter) || File.Exists(adapter));
    }

    [Fact]
    public void PretrainThatDivergesFailsNamingTheStepAndWritesNoModel()
    {
        string data = folder.File("corpus.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 20).Select(i => $"the cat sat on the mat {i}.")));
        string output = System.IO.Path.Combine(folder.Path, "pretrained");
        var (code, _, error) = Invoke("pretrain", "--data", data, "--steps", "20", "--batch", "2", "--seq", "16", "--lr", "1e30", "--out", output);
        Assert.Equal(1, code);
        Assert.Matches(@"^error: training diverged at step \d+: (loss|gradient norm) (NaN|-?Infinity)\n$", error);
        Assert.False(Directory.Exists(output) || File.Exists(output));
    }

    [Fact]
    public void ScoreAndGenerateRefuseNonFiniteLogitsNamingTheFirstRow()
    {
        string model = NanHeadModel();
        var scored = Invoke("score", "--model", model, "--tokens", "1,2,3");
        Assert.Equal((1, ""), (scored.Code, scored.Output));
        Assert.True(scored.Error.Split('\n')[1].StartsWith("error: the logits are not finite: row 0 (token position 0, token id 1) has NaN at vocabulary index 0;", StringComparison.Ordinal), scored.Error);

        var generated = Invoke("generate", "--model", model, "--prompt-tokens", "5,6", "--max-new-tokens", "2");
        Assert.Equal((1, ""), (generated.Code, generated.Output));
        Assert.True(generated.Error.Split('\n')[1].StartsWith("error: the logits are not finite: row 0 (token position 0, token id 5) has NaN at vocabulary index 0;", StringComparison.Ordinal), generated.Error);
    }

    [Fact]
    public void TrainerSkipsANonFiniteStepWithoutTouchingTheOptimizerAndStopsPastTheLimit()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
        Lora.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8 }, seed: 2);
        var options = new TrainerOptions { Steps = 6, LearningRate = 1e-2, Seed = 1, SkipNonFiniteSteps = true, MaxSkippedSteps = 1 };
        var trainer = new Trainer(model, Batch, 2, options);
        trainer.Run(untilStep: 2);
        var state = Snapshot(trainer);

        float[] head = model.LmHead.Weight.Data.ToArray();
        Array.Fill(model.LmHead.Weight.Data, float.NaN);
        var reports = new List<TrainingProgress>();
        trainer.Run(new ProgressCallback<TrainingProgress>(reports.Add), untilStep: 3);
        var report = Assert.Single(reports);
        Assert.Equal((3, true, 1), (report.Step, report.Skipped, report.SkippedSteps));
        Assert.True(double.IsNaN(report.Loss));
        Assert.Equal((3, 2), (trainer.Step, trainer.Optimizer.StepCount));
        Assert.Equal([3], trainer.SkippedSteps);
        Assert.True(double.IsNaN(trainer.Losses[2]));
        Assert.Equal(state, Snapshot(trainer));

        head.CopyTo(model.LmHead.Weight.Data, 0);
        trainer.Run(untilStep: 5);
        Assert.Equal((5, 4), (trainer.Step, trainer.Optimizer.StepCount));
        Assert.NotEqual(state[0], Snapshot(trainer)[0]);
        Assert.Equal(trainer.Losses[4], trainer.LastFiniteLoss);

        // The checkpoint keeps the step, the update count, the skipped steps and the NaN loss.
        using var temp = new TempFolder();
        trainer.SaveCheckpoint(temp.Path);
        var resumed = new Trainer(model, Batch, 2, options);
        resumed.LoadCheckpoint(temp.Path);
        Assert.Equal((5, 4), (resumed.Step, resumed.Optimizer.StepCount));
        Assert.Equal([3], resumed.SkippedSteps);
        Assert.Equal(trainer.Losses, resumed.Losses);

        Array.Fill(model.LmHead.Weight.Data, float.NaN);
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.Run());
        Assert.Equal("training diverged at step 6: loss NaN, and 1 non-finite step(s) were already skipped, the most allowed", e.Message);
        Assert.Equal(5, trainer.Step);
    }

    [Fact]
    public void TrainWithSkipNonFiniteStepsSkipsCountsAndStopsPastMaxSkippedSteps()
    {
        string model = NanHeadModel();
        string data = folder.File("data.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 20).Select(i => $"abcabc {i} abcabc")));
        string adapter = System.IO.Path.Combine(folder.Path, "adapter");
        string[] args = ["train", "--model", model, "--data", data, "--r", "4", "--steps", "3", "--batch", "2", "--seq", "8", "--skip-nonfinite-steps"];
        string warning = $"warning: tensor 'lm_head.weight' in {System.IO.Path.Combine(model, "model.safetensors")} has 1 NaN of 16384 elements\n";
        var (code, output, error) = Invoke([.. args, "--out", adapter]);
        Assert.Equal((0, warning), (code, error));
        Assert.Contains("step 1/3  skipped: loss NaN is not finite; no update (1 skipped so far)\n", output);
        Assert.Contains("step 3/3  skipped: loss NaN is not finite; no update (3 skipped so far)\n", output);
        Assert.EndsWith("; final loss NaN; 3 non-finite step(s) skipped (step 1, 2, 3)\n", output);
        Assert.True(File.Exists(System.IO.Path.Combine(adapter, Lora.WeightsFile)));

        string limited = System.IO.Path.Combine(folder.Path, "limited");
        var stopped = Invoke([.. args, "--max-skipped-steps", "1", "--out", limited]);
        Assert.Equal(1, stopped.Code);
        Assert.Equal(warning + "error: training diverged at step 2: loss NaN, and 1 non-finite step(s) were already skipped, the most allowed\n", stopped.Error);
        Assert.False(Directory.Exists(limited));

        var alone = Invoke([.. args[..^1], "--max-skipped-steps", "1", "--out", limited]);
        Assert.Equal("error: --max-skipped-steps applies with --skip-nonfinite-steps; give both or neither.\n", alone.Error);
    }

    [Fact]
    public void PretrainThatDivergesKeepsTheLastGoodCheckpointAndNamesIt()
    {
        string data = folder.File("corpus.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 20).Select(i => $"the cat sat on the mat {i}.")));
        string output = System.IO.Path.Combine(folder.Path, "pretrained");
        var (code, _, error) = Invoke("pretrain", "--data", data, "--steps", "20", "--batch", "2", "--seq", "16", "--lr", "1e30", "--save-every", "1", "--out", output);
        Assert.Equal(1, code);
        var match = System.Text.RegularExpressions.Regex.Match(error, @"^error: training diverged at step (\d+): (loss|gradient norm) (NaN|-?Infinity); the last good checkpoint is (.+) \(continue with --resume (.+)\)\n$");
        Assert.True(match.Success, error);
        int diverged = int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        string last = Training.CheckpointFolders.PathOf(output, diverged - 1);
        Assert.Equal((last, last), (match.Groups[4].Value, match.Groups[5].Value));
        Assert.Equal(Enumerable.Range(1, diverged - 1), Training.CheckpointFolders.List(output).Select(c => c.Step));
        Assert.False(File.Exists(System.IO.Path.Combine(output, "model.safetensors")));
        var kept = LlamaForCausalLM.Load(last);
        Assert.All(kept.NamedParameters(), p => Assert.True(p.Parameter.Data.All(float.IsFinite), $"{p.Name} is not finite in {last}"));
    }

    [Fact]
    public void AnUpdateThatOverflowsIsNeverSavedAsAGoodCheckpoint()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
        Lora.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8 }, seed: 2);
        var trainer = new Trainer(model, Batch, 2, new TrainerOptions { Steps = 3, Seed = 1 });
        trainer.Run(untilStep: 1);
        var (name, parameter) = model.NamedParameters().First(p => p.Parameter.Trainable);
        parameter.Data[5] = float.PositiveInfinity;
        string checkpoint = System.IO.Path.Combine(folder.Path, "checkpoint");
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.SaveCheckpoint(checkpoint));
        Assert.Equal($"training diverged at step 1: the update made {name}[5] = ∞", e.Message.Replace("Infinity", "∞", StringComparison.Ordinal));
        Assert.False(Directory.Exists(checkpoint));
    }

    private static List<float[]> Snapshot(Trainer trainer) =>
        [.. trainer.Optimizer.State.SelectMany(s => new[] { s.Parameter.Data.ToArray(), s.M.ToArray(), s.V.ToArray() })];

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
