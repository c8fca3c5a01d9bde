// The gradient reducer of data-parallel training, as PyTorch DDP's: the trainable parameters, in
// the model's order, laid out in one flat vector; buckets of consecutive parameters (about
// BucketFloats each) formed from the last parameter backwards, since backward reaches the last
// layers first. While a shard's backward runs, the tape calls Poll after every node: as soon as
// every parameter of the next bucket has its gradient, the bucket is copied out and its all-reduce
// starts on the communicator's thread, overlapping the backward of earlier layers. Finish starts
// the rest and waits for all. The order of the buckets is fixed (and so the same on every rank);
// only when a bucket starts depends on timing, never what it sums.
// A parameter shared by two modules (tied embeddings) gets gradient twice in one backward: its bucket
// waits for Finish. Any other parameter that receives more gradient after its bucket left (a module
// called twice in one forward, which DDP refuses too) would be reduced without that part: Finish
// compares every early bucket's parameters with what was sent and fails clearly if one changed.
using PeftKernels.Distributed;

namespace PeftKernels.Training;

internal sealed class GradientBuckets
{
    private readonly (string Name, Parameter Parameter, int Offset)[] parameters;
    private readonly (int First, int Last)[] buckets;
    private readonly IAllReduce group;
    private readonly bool[] late;
    private readonly List<Task> pending = [];
    private int nextBucket;
    private int nextParameter;
    private int earlyBuckets;

    public GradientBuckets(IReadOnlyList<(string Name, Parameter Parameter)> trainable, IAllReduce group, int bucketFloats, IReadOnlySet<Parameter> shared)
    {
        this.group = group;
        late = [.. trainable.Select(p => shared.Contains(p.Parameter))];
        int offset = 0;
        parameters = new (string, Parameter, int)[trainable.Count];
        for (int i = 0; i < trainable.Count; i++)
        {
            parameters[i] = (trainable[i].Name, trainable[i].Parameter, offset);
            offset = checked(offset + (int)trainable[i].Parameter.Count);
        }

        Length = offset;
        var list = new List<(int, int)>();
        int last = parameters.Length - 1;
        while (last >= 0)
        {
            int first = last;
            long size = parameters[last].Parameter.Count;
            while (first > 0 && size + parameters[first - 1].Parameter.Count <= bucketFloats)
            {
                first--;
                size += parameters[first].Parameter.Count;
            }

            list.Add((first, last));
            last = first - 1;
        }

        buckets = [.. list];
        Local = new float[Length];
        Reduced = new float[Length];
    }

    /// <summary>Floats of all trainable parameters.</summary>
    public int Length { get; }

    /// <summary>Buckets per backward.</summary>
    public int BucketCount => buckets.Length;

    /// <summary>This rank's gradients of the last shard (flat, the model's order; zeros for a parameter backward did not reach).</summary>
    public float[] Local { get; }

    /// <summary>The rank-order sum over the ranks after <see cref="Finish"/>.</summary>
    public float[] Reduced { get; }

    /// <summary>Buckets whose reduction started while backward still ran, over the run (a measure of the overlap).</summary>
    public long OverlappedBuckets { get; private set; }

    /// <summary>Drops the parameters' gradients before a shard's backward, so that a non-null gradient means "written by this backward".</summary>
    public void Begin()
    {
        foreach (var (_, p, _) in parameters)
        {
            p.Grad = null;
        }

        nextBucket = 0;
        nextParameter = buckets.Length > 0 ? buckets[0].Last : -1;
        earlyBuckets = 0;
        pending.Clear();
    }

    /// <summary>The tape hook: starts every next bucket whose parameters all have their gradients.</summary>
    public void Poll()
    {
        while (nextBucket < buckets.Length)
        {
            var (first, _) = buckets[nextBucket];
            while (nextParameter >= first)
            {
                if (late[nextParameter] || parameters[nextParameter].Parameter.Grad == null)
                {
                    return;
                }

                nextParameter--;
            }

            Launch(nextBucket);
            nextBucket++;
            earlyBuckets++;
            OverlappedBuckets++;
            nextParameter = nextBucket < buckets.Length ? buckets[nextBucket].Last : -1;
        }
    }

    /// <summary>Starts the buckets backward did not finish, waits for every reduction and checks the early buckets were final.</summary>
    public void Finish()
    {
        for (; nextBucket < buckets.Length; nextBucket++)
        {
            Launch(nextBucket);
        }

        foreach (var task in pending)
        {
            group.Wait(task);
        }

        for (int b = 0; b < earlyBuckets; b++)
        {
            for (int i = buckets[b].First; i <= buckets[b].Last; i++)
            {
                var (name, p, offset) = parameters[i];
                if (!Local.AsSpan(offset, (int)p.Count).SequenceEqual(p.Grad))
                {
                    throw new InvalidOperationException($"data-parallel training: {name} received more gradient after its bucket was reduced; "
                        + "a parameter used more than once in one forward is not supported (its gradient is not final when backward first writes it).");
                }
            }
        }
    }

    /// <summary>Copies this rank's gradients (zeros where none) into <paramref name="destination"/> without reducing (the one-process shard emulation).</summary>
    public void CopyLocal(float[] destination)
    {
        foreach (var (_, p, offset) in parameters)
        {
            CopyGrad(p, destination, offset);
        }
    }

    /// <summary>Sets every parameter's gradient to its slice of <paramref name="flat"/>.</summary>
    public void SetGradients(float[] flat)
    {
        foreach (var (_, p, offset) in parameters)
        {
            p.Grad = flat.AsSpan(offset, (int)p.Count).ToArray();
        }
    }

    private static void CopyGrad(Parameter p, float[] destination, int offset)
    {
        var target = destination.AsSpan(offset, (int)p.Count);
        if (p.Grad is { } g)
        {
            g.CopyTo(target);
        }
        else
        {
            target.Clear();
        }
    }

    private void Launch(int b)
    {
        var (first, last) = buckets[b];
        int start = parameters[first].Offset;
        int end = parameters[last].Offset + (int)parameters[last].Parameter.Count;
        for (int i = first; i <= last; i++)
        {
            CopyGrad(parameters[i].Parameter, Local, parameters[i].Offset);
        }

        Array.Copy(Local, start, Reduced, start, end - start);
        pending.Add(group.AllReduceSumAsync(Reduced.AsMemory(start, end - start)));
    }
}
