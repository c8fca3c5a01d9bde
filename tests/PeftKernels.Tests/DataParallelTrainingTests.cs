using PeftKernels.Distributed;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

public class DataParallelTrainingTests
{
    private const int Seq = 12;
    private const int Batch = 12;
    private static readonly LoraConfig Config = new() { R = 4, LoraAlpha = 8, LoraDropout = 0.1, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) };

    /// <summary>"+3 mod 40" sequences; every third row masks its first half (-100), so shards hold different label counts.</summary>
    private static (int[] Inputs, int[] Labels) Task3(Random rng)
    {
        var inputs = new int[Batch * Seq];
        var labels = new int[Batch * Seq];
        for (int b = 0; b < Batch; b++)
        {
            int x = rng.Next(40);
            for (int t = 0; t < Seq; t++)
            {
                inputs[(b * Seq) + t] = x;
                x = (x + 3) % 40;
                labels[(b * Seq) + t] = b % 3 == 0 && t < Seq / 2 ? -100 : x;
            }
        }

        return (inputs, labels);
    }

    private static LlamaForCausalLM Model()
    {
        var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
        Lora.Apply(model, Config, seed: 2);
        return model;
    }

    private static TrainerOptions Options(DataParallelOptions? dp, int steps = 3) => new()
    {
        Steps = steps,
        GradientAccumulation = 2,
        LearningRate = 1e-2,
        WarmupSteps = 1,
        Seed = 5,
        Kernel = new(1),
        DataParallel = dp,
    };

    private static byte[] AdapterBytes(LlamaForCausalLM model)
    {
        using var temp = new TempFolder();
        Lora.Save(model, temp.Path, Config);
        return File.ReadAllBytes(Path.Combine(temp.Path, Lora.WeightsFile));
    }

    /// <summary>Trains on <paramref name="ranks"/> in-process ranks; returns each rank's adapter bytes and rank 0's trainer.</summary>
    private static (byte[][] Adapters, Trainer Rank0) TrainOnRanks(int ranks, int bucketFloats = 1 << 18, Action<int, Trainer>? afterBuild = null, int steps = 3)
    {
        var group = InProcessAllReduce.CreateGroup(ranks, TimeSpan.FromSeconds(60));
        var adapters = new byte[ranks][];
        var trainers = new Trainer[ranks];
        AllReduceTests.OnRanks(group, g =>
        {
            var model = Model();
            var trainer = new Trainer(model, Task3, Batch, Options(new DataParallelOptions { Group = g, BucketFloats = bucketFloats }, steps));
            afterBuild?.Invoke(g.Rank, trainer);
            trainer.Run();
            trainers[g.Rank] = trainer;
            adapters[g.Rank] = AdapterBytes(model);
            g.Dispose();
        });
        return (adapters, trainers[0]);
    }

    private static (byte[] Adapter, Trainer Trainer) TrainAlone(int shards, int steps = 3)
    {
        var model = Model();
        var group = InProcessAllReduce.CreateGroup(1, TimeSpan.FromSeconds(60))[0];
        var trainer = new Trainer(model, Task3, Batch, Options(new DataParallelOptions { Group = group, Shards = shards }, steps));
        trainer.Run();
        return (AdapterBytes(model), trainer);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void NRanksGiveTheSameAdapterBytesAsOneProcessOverTheSameShards(int ranks)
    {
        // Small buckets: many reductions start while backward still runs, and the result must not depend on that.
        var (adapters, rank0) = TrainOnRanks(ranks, bucketFloats: 600);
        var (alone, single) = TrainAlone(ranks);
        for (int r = 0; r < ranks; r++)
        {
            Assert.Equal(alone, adapters[r]);
        }

        Assert.Equal(single.Losses, rank0.Losses);
        Assert.True(rank0.OverlappedBuckets > 0, "no bucket's all-reduce started before backward ended");

        // A different number of shards is a different summation (and dropout masks): the equality above is not vacuous.
        Assert.NotEqual(alone, TrainAlone(ranks == 2 ? 3 : 2).Adapter);
    }

    [Fact]
    public void TheReportedLossIsTheGlobalBatchMeanAndTheGradientThatOfTheWholeBatch()
    {
        // Without dropout, one shard and two give the same first loss (the mean over every labelled position of the global batch)
        // and nearly the same update.
        var noDropout = Config with { LoraDropout = 0 };
        double[] first = new double[2];
        float[][] b = new float[2][];
        for (int i = 0; i < 2; i++)
        {
            var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40), seed: 3);
            Lora.Apply(model, noDropout, seed: 2);
            var dp = i == 0 ? null : new DataParallelOptions { Group = InProcessAllReduce.CreateGroup(1, TimeSpan.FromSeconds(60))[0], Shards = 4 };
            var trainer = new Trainer(model, Task3, Batch, Options(dp, steps: 1) with { GradientAccumulation = 1 });
            trainer.Run();
            first[i] = trainer.Losses[0];
            b[i] = [.. model.NamedParameters().Where(p => p.Name.Contains("lora_B", StringComparison.Ordinal)).SelectMany(p => p.Parameter.ToFloat32())];
        }

        Assert.Equal(first[0], first[1], 5);
        Assert.Equal(b[0].Length, b[1].Length);
        for (int i = 0; i < b[0].Length; i++)
        {
            Assert.True(Math.Abs(b[0][i] - b[1][i]) < 1e-5, $"lora_B element {i}: {b[0][i]} with one shard, {b[1][i]} with four");
        }
    }

    [Fact]
    public void FullTrainingWithTiedEmbeddingsIsExactToo()
    {
        // Every weight trains (peft pretrain) and embed_tokens is lm_head: a parameter that gets gradient twice in one backward.
        static LlamaForCausalLM Full()
        {
            var model = LlamaForCausalLM.Create(LlamaConfig.Tiny(40) with { TieWordEmbeddings = true }, seed: 3);
            foreach (var (_, p) in model.NamedParameters())
            {
                p.Trainable = true;
            }

            return model;
        }

        static float[] Weights(LlamaForCausalLM m) => [.. m.NamedParameters().SelectMany(p => p.Parameter.ToFloat32())];
        var ranks = new float[2][];
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromSeconds(60));
        AllReduceTests.OnRanks(group, g =>
        {
            var model = Full();
            new Trainer(model, Task3, Batch, Options(new DataParallelOptions { Group = g, BucketFloats = 2000 }, steps: 2)).Run();
            ranks[g.Rank] = Weights(model);
            g.Dispose();
        });
        var alone = Full();
        new Trainer(alone, Task3, Batch, Options(new DataParallelOptions { Group = InProcessAllReduce.CreateGroup(1, TimeSpan.FromSeconds(60))[0], Shards = 2 }, steps: 2)).Run();
        var expected = Weights(alone).Select(BitConverter.SingleToInt32Bits).ToArray();
        Assert.Equal(expected, ranks[0].Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(expected, ranks[1].Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void ResumingEveryRankFromRankZerosCheckpointGivesTheUninterruptedBytes()
    {
        var (uninterrupted, _) = TrainOnRanks(2, steps: 4);
        using var temp = new TempFolder();
        string checkpoint = Path.Combine(temp.Path, "checkpoint-2");
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromSeconds(60));
        AllReduceTests.OnRanks(group, g =>
        {
            var trainer = new Trainer(Model(), Task3, Batch, Options(new DataParallelOptions { Group = g }, steps: 4));
            trainer.Run(untilStep: 2);
            if (g.Rank == 0)
            {
                Directory.CreateDirectory(checkpoint);
                trainer.SaveCheckpoint(checkpoint);
            }

            g.Dispose();
        });

        var resumed = new byte[2][];
        var again = InProcessAllReduce.CreateGroup(2, TimeSpan.FromSeconds(60));
        AllReduceTests.OnRanks(again, g =>
        {
            var model = Model();
            var trainer = new Trainer(model, Task3, Batch, Options(new DataParallelOptions { Group = g }, steps: 4));
            trainer.LoadCheckpoint(checkpoint);
            Assert.Equal(2, trainer.Step);
            trainer.Run();
            resumed[g.Rank] = AdapterBytes(model);
            g.Dispose();
        });

        Assert.Equal(uninterrupted[0], resumed[0]);
        Assert.Equal(uninterrupted[0], resumed[1]);
    }

    [Fact]
    public void ARankThatStopsMakesTheOthersFailWithACommunicationErrorInsteadOfHanging()
    {
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromMilliseconds(500));
        var errors = new Exception?[2];
        AllReduceTests.OnRanks(group, g =>
        {
            if (g.Rank == 1)
            {
                return; // this rank "dies" before its first step
            }

            var trainer = new Trainer(Model(), Task3, Batch, Options(new DataParallelOptions { Group = g }));
            errors[0] = Record.Exception(() => trainer.Run());
        });

        var e = Assert.IsType<CommunicationException>(errors[0]);
        Assert.Contains("peer", e.Message);
    }

    [Fact]
    public void ShardsThatDoNotMatchTheRanksOrTheBatchAreRefused()
    {
        var group = InProcessAllReduce.CreateGroup(2, TimeSpan.FromSeconds(5));
        var e = Assert.Throws<ArgumentException>(() => new Trainer(Model(), Task3, Batch, Options(new DataParallelOptions { Group = group[0], Shards = 3 })));
        Assert.Contains("must equal the number of ranks (2)", e.Message);
        var alone = InProcessAllReduce.CreateGroup(1, TimeSpan.FromSeconds(5))[0];
        e = Assert.Throws<ArgumentException>(() => new Trainer(Model(), Task3, Batch, Options(new DataParallelOptions { Group = alone, Shards = 5 })));
        Assert.Contains("must split evenly over 5", e.Message);
    }
}
