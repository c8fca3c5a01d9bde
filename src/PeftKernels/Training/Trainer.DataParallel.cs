// Data-parallel training (TrainerOptions.DataParallel). Every rank draws each global batch exactly as
// one process draws it (the sampler's generator is a function of (seed, micro-step) only), cuts its
// rows into S shards of batch / S rows, and computes shard Rank (one process, S shards one after
// another). For shard s with c_s labelled positions out of C in the global batch, its mean loss L_s
// enters backward with weight w_s = c_s / C / accumulation, so Σ_s w_s·∇L_s is the gradient of the
// global batch's mean loss. Each shard's backward starts from empty gradients; its gradients are
// summed over the shards in shard order — ((g₀ + g₁) + g₂) + … — by the all-reduce (bucketed, while
// backward runs: GradientBuckets) or, in one process, by RankOrder.Sum over the shards' copies: the
// same adds in the same order, so N ranks and one process with S = N give the same bits. Micro-steps
// add up in order into the step's gradient; the reported loss is Σ_s w_s·L_s (the global mean, the
// per-shard losses gathered by a small all-reduce). Dropout masks are a function of (seed,
// micro-step, shard). Only trainable parameters are reduced; after the reduction every rank holds
// the same gradients, so clipping, AdamW and the schedule give the same parameters everywhere, and
// any rank's checkpoint resumes every rank.
using PeftKernels.Autograd;
using PeftKernels.Distributed;
using PeftKernels.Nn;

namespace PeftKernels.Training;

/// <summary>Data-parallel training: the ranks of <see cref="Group"/> each take one shard of every global batch.</summary>
public sealed record DataParallelOptions
{
    /// <summary>The ranks (an <see cref="MpiAllReduce"/>, or an <see cref="InProcessAllReduce"/> rank).</summary>
    public required IAllReduce Group { get; init; }

    /// <summary>
    /// Shards per global batch (0 = the group's size). With a group of one, S &gt; 1 computes the S shards one after another and
    /// sums them as S ranks would: the same bytes as an S-rank run. With more ranks it must equal their number.
    /// </summary>
    public int Shards { get; init; }

    /// <summary>Floats per gradient bucket (a bucket's all-reduce starts as soon as backward has written all its parameters).</summary>
    public int BucketFloats { get; init; } = 1 << 18;
}

public sealed partial class Trainer
{
    private DataParallelState? dataParallel;

    /// <summary>With <see cref="TrainerOptions.DataParallel"/>: gradient buckets whose all-reduce started while backward still ran, over the run.</summary>
    public long OverlappedBuckets => dataParallel?.Buckets.OverlappedBuckets ?? 0;

    /// <summary>With <see cref="TrainerOptions.DataParallel"/>: time spent waiting for gradient and loss reductions after backward, over the run.</summary>
    public TimeSpan CommunicationWait => dataParallel?.Wait.Elapsed ?? TimeSpan.Zero;

    private void SetUpDataParallel(IReadOnlyList<(string Name, Parameter Parameter)> trainable)
    {
        if (Options.DataParallel is not { } dp)
        {
            return;
        }

        ArgumentNullException.ThrowIfNull(dp.Group, nameof(DataParallelOptions.Group));
        int size = dp.Group.Size, shards = dp.Shards == 0 ? size : dp.Shards;
        if (shards <= 0 || (size > 1 && shards != size))
        {
            throw new ArgumentException(size > 1
                ? $"data-parallel shards ({dp.Shards}) must equal the number of ranks ({size}) (or be 0 for that number)."
                : $"data-parallel shards must be positive; got {dp.Shards}.");
        }

        if (batch % shards != 0)
        {
            throw new ArgumentException($"the global batch ({batch} sequences) must split evenly over {shards} data-parallel shards; give a batch that is a multiple of {shards}.");
        }

        if (dp.BucketFloats <= 0)
        {
            throw new ArgumentException($"BucketFloats must be positive; got {dp.BucketFloats}.");
        }

        // Parameters owned by two modules (tied embeddings): their gradient is final only when backward ends.
        var shared = model.NamedModules()
            .SelectMany(m => m.Module.NamedParameters().Where(p => !p.Name.Contains('.', StringComparison.Ordinal)).Select(p => p.Parameter))
            .GroupBy(p => p, (IEqualityComparer<Parameter>)ReferenceEqualityComparer.Instance)
            .Where(g => g.Count() > 1)
            .Select(g => g.Key)
            .ToHashSet<Parameter>(ReferenceEqualityComparer.Instance);
        dataParallel = new DataParallelState(dp.Group, shards, new GradientBuckets(trainable, dp.Group, dp.BucketFloats, shared));
    }

    /// <summary>One optimizer step's micro-batches, data-parallel; leaves the step's gradient in the parameters and returns the summed micro-step losses.</summary>
    private double DataParallelMicroSteps(int accum, ref long tokens)
    {
        var state = dataParallel!;
        var buckets = state.Buckets;
        int shards = state.Shards, rows = batch / shards;
        double lossSum = 0;
        for (int micro = 0; micro < accum; micro++)
        {
            ulong index = ((ulong)Step * (ulong)accum) + (ulong)micro;
            var rng = new Random((int)(ForwardContext.Mix((ulong)Options.Seed, index) & int.MaxValue));
            var (inputs, labels) = sampler(rng);
            tokens += inputs.Length;
            int perShard = inputs.Length / shards;
            var counts = new int[shards];
            long total = 0;
            for (int s = 0; s < shards; s++)
            {
                counts[s] = Kernels.Cpu.CrossEntropy.CountValid(labels.AsSpan(s * perShard, perShard));
                total += counts[s];
            }

            var shardLosses = new float[shards];
            ulong contextSeed = ForwardContext.Mix((ulong)Options.Seed ^ 0x5EEDUL, index);
            bool alone = state.Group.Size == 1;
            for (int s = alone ? 0 : state.Group.Rank; s < (alone ? shards : state.Group.Rank + 1); s++)
            {
                buckets.Begin();
                if (counts[s] > 0)
                {
                    var context = new ForwardContext(ForwardContext.Mix(contextSeed, (ulong)s), Options.Kernel);
                    var loss = model.Loss(inputs[(s * perShard)..((s + 1) * perShard)], labels[(s * perShard)..((s + 1) * perShard)], rows, context);
                    shardLosses[s] = loss.Item();
                    float weight = (float)((double)counts[s] / total / accum);
                    Tape.AfterNode = alone ? null : buckets.Poll;
                    try
                    {
                        Tape.Backward(loss, weight);
                    }
                    finally
                    {
                        Tape.AfterNode = null;
                    }
                }

                if (alone)
                {
                    buckets.CopyLocal(state.ShardGradients(s, buckets.Length));
                }
            }

            state.Wait.Start();
            if (alone)
            {
                RankOrder.Sum(buckets.Reduced, [.. Enumerable.Range(0, shards).Select(s => (ReadOnlyMemory<float>)state.ShardGradients(s, buckets.Length))]);
            }
            else
            {
                buckets.Finish();
                state.Group.AllReduceSum(shardLosses);
            }

            state.Wait.Stop();
            if (micro == 0)
            {
                buckets.Reduced.CopyTo(state.StepGradient, 0);
            }
            else
            {
                System.Numerics.Tensors.TensorPrimitives.Add(state.StepGradient, buckets.Reduced, state.StepGradient);
            }

            double microLoss = total == 0 ? double.NaN : 0;
            for (int s = 0; s < shards && total > 0; s++)
            {
                microLoss += (double)counts[s] / total * shardLosses[s];
            }

            lossSum += microLoss;
        }

        buckets.SetGradients(state.StepGradient);
        return lossSum;
    }

    private sealed class DataParallelState(IAllReduce group, int shards, GradientBuckets buckets)
    {
        private readonly float[][] shardGradients = new float[shards][];

        public IAllReduce Group { get; } = group;

        public int Shards { get; } = shards;

        public GradientBuckets Buckets { get; } = buckets;

        public float[] StepGradient { get; } = new float[buckets.Length];

        public System.Diagnostics.Stopwatch Wait { get; } = new();

        public float[] ShardGradients(int shard, int length) => shardGradients[shard] ??= new float[length];
    }
}
