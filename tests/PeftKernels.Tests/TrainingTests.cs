using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

public class TrainingTests
{
    private const int Seq = 16;
    private const int Batch = 8;

    /// <summary>Task "+k": sequences x_{t+1} = (x_t + k) mod 32 from a random start.</summary>
    private static (int[] Inputs, int[] Labels) ShiftTask(Random rng, int k, int batch = Batch)
    {
        var inputs = new int[batch * Seq];
        var labels = new int[batch * Seq];
        for (int b = 0; b < batch; b++)
        {
            int x = rng.Next(32);
            for (int t = 0; t < Seq; t++)
            {
                inputs[(b * Seq) + t] = x;
                x = (x + k) % 32;
                labels[(b * Seq) + t] = x;
            }
        }

        return (inputs, labels);
    }

    private static double HeldOutLoss(LlamaForCausalLM model, int k)
    {
        using var scope = Tape.NoGrad();
        var (inputs, labels) = ShiftTask(new Random(12345), k, 16);
        return model.Loss(inputs, labels, 16).Item();
    }

    /// <summary>A tiny Llama pre-trained (all weights) on task "+1" inside the test.</summary>
    private static LlamaForCausalLM Pretrained()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
        foreach (var (_, p) in model.NamedParameters())
        {
            p.Trainable = true;
        }

        new Trainer(model, rng => ShiftTask(rng, 1), Batch, new TrainerOptions { Steps = 60, LearningRate = 1e-2, WarmupSteps = 5, Seed = 1 }).Run();
        model.Freeze();
        return model;
    }

    private static readonly Lazy<string> PretrainedFolder = new(() =>
    {
        string folder = Directory.CreateTempSubdirectory("peftkernels-pretrained-").FullName;
        Pretrained().Save(folder);
        return folder;
    });

    [Theory]
    [InlineData("lora")]
    [InlineData("qlora")]
    public void FineTuningOnANewTaskLowersItsHeldOutLossAndLeavesTheBaseUntouched(string method)
    {
        var model = LlamaForCausalLM.Load(PretrainedFolder.Value);
        Assert.True(HeldOutLoss(model, 1) < 0.5, $"pre-training did not learn task +1: loss {HeldOutLoss(model, 1)}");
        if (method == "qlora")
        {
            model.QuantizeLinears();
        }

        var baseBefore = model.NamedParameters().Select(p => (p.Name, Bytes: p.Parameter.DType == TensorDType.Q4 ? p.Parameter.Quantized.Packed.ToArray() : p.Parameter.ToFloat32().SelectMany(BitConverter.GetBytes).ToArray())).ToList();
        double before = HeldOutLoss(model, 5);
        Lora.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed: 2);
        var reports = new List<TrainingProgress>();
        var trainer = new Trainer(model, rng => ShiftTask(rng, 5), Batch, new TrainerOptions { Steps = 60, LearningRate = 1e-2, WarmupSteps = 3, Seed = 4 });
        trainer.Run(new ProgressCallback<TrainingProgress>(reports.Add));
        double after = HeldOutLoss(model, 5);

        // Stated margin: the fine-tuned held-out loss is at most 40% of the base's on the new task.
        Assert.True(after < 0.4 * before, $"{method}: held-out loss {before:F3} → {after:F3}");
        Assert.Equal(60, reports.Count);
        Assert.Equal(Enumerable.Range(1, 60), reports.Select(r => r.Step));
        Assert.All(reports, r => Assert.True(r.TokensPerSecond > 0 && r.LearningRate >= 0 && double.IsFinite(r.Loss)));
        var baseAfter = model.NamedParameters().Where(p => !p.Name.Contains(".lora_", StringComparison.Ordinal))
            .Select(p => (p.Name, Bytes: p.Parameter.DType == TensorDType.Q4 ? p.Parameter.Quantized.Packed.ToArray() : p.Parameter.ToFloat32().SelectMany(BitConverter.GetBytes).ToArray())).ToList();
        Assert.Equal(baseBefore.Select(b => b.Name), baseAfter.Select(b => b.Name));
        for (int i = 0; i < baseBefore.Count; i++)
        {
            Assert.True(baseBefore[i].Bytes.AsSpan().SequenceEqual(baseAfter[i].Bytes), $"base weight {baseBefore[i].Name} changed");
        }

        // The trained adapter survives a PEFT-layout round trip onto a fresh base.
        using var temp = new TempFolder();
        Lora.Save(model, temp.Path, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        var fresh = LlamaForCausalLM.Load(PretrainedFolder.Value);
        if (method == "qlora")
        {
            fresh.QuantizeLinears();
        }

        Lora.Load(fresh, temp.Path);
        Assert.Equal(after, HeldOutLoss(fresh, 5));
    }

    [Fact]
    public void ResumingFromACheckpointReproducesTheUninterruptedLosses()
    {
        var options = new TrainerOptions { Steps = 6, LearningRate = 5e-3, WarmupSteps = 2, GradientAccumulation = 2, Seed = 9, LoraPlusRatio = 4, WeightDecay = 0.01 };
        var config = new LoraConfig { R = 4, LoraAlpha = 8, LoraDropout = 0.1, TargetModules = TargetModules.FromList("q_proj", "v_proj", "up_proj") };
        Trainer NewTrainer()
        {
            var model = LlamaForCausalLM.Load(PretrainedFolder.Value);
            Lora.Apply(model, config, seed: 6);
            return new Trainer(model, rng => ShiftTask(rng, 3), Batch, options);
        }

        var straight = NewTrainer();
        straight.Run();

        using var temp = new TempFolder();
        var first = NewTrainer();
        first.Run(untilStep: 3);
        first.SaveCheckpoint(temp.Path);
        Assert.Equal([Trainer.StateJsonFile, Trainer.StateTensorsFile], temp.Entries());

        var resumed = NewTrainer();
        resumed.LoadCheckpoint(temp.Path);
        Assert.Equal(3, resumed.Step);
        resumed.Run();
        Assert.Equal(straight.Losses, resumed.Losses);
        Assert.True(straight.Losses[^1] < straight.Losses[0], "the run did not train");
    }

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysByCosine()
    {
        var s = new LearningRateSchedule(1e-3, 10, 110);
        Assert.Equal(0, s.At(0));
        Assert.Equal(5e-4, s.At(5), 12);
        Assert.Equal(1e-3, s.At(10), 12);
        Assert.Equal(5e-4, s.At(60), 12);
        Assert.Equal(0, s.At(110), 12);
    }

    [Fact]
    public void ClippingScalesTheGlobalNormDownToTheLimit()
    {
        var a = new Parameter([0f, 0f], [2], trainable: true) { Grad = [3f, 0f] };
        var b = new Parameter([0f], [1], trainable: true) { Grad = [4f] };
        var optimizer = new AdamWOptimizer([new ParameterGroup([a, b])]);
        Assert.Equal(5, optimizer.ClipGradNorm(1.0), 6);
        Assert.Equal(0.6f, a.Grad![0], 5);
        Assert.Equal(0.8f, b.Grad![0], 5);
        Assert.Equal(1, optimizer.ClipGradNorm(10.0), 5);
        Assert.Equal(0.6f, a.Grad![0], 5);
        Assert.Equal(24, optimizer.StateBytes);
    }
}
