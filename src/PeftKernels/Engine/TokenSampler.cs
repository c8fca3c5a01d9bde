// Picks a sequence's next token from its logits row ℓ [V], in vLLM's and Hugging Face's order:
//   greedy (temperature 0 or top_k 1): argmax ℓ, the first index on ties (torch.argmax);
//   otherwise  w_i = exp((ℓ_i − max ℓ) / T)                       (softmax(ℓ/T) up to its sum)
//              top-k: keep i with ℓ_i ≥ the k-th largest logit     (ties with the k-th kept, as torch.topk's
//                     threshold in HF's TopKLogitsWarper and vLLM)
//              top-p: over the kept tokens sorted by w descending (ties by id), keep token j while the mass
//                     before it S_{j−1} < top_p · Σ w  (the smallest set whose mass reaches top_p; HF drops a
//                     token when the ascending cumulative mass ≤ 1 − top_p: the same set)
//              draw u ~ U[0, 1) · Σ_kept w from the sequence's own generator (exactly one draw per token) and
//              return the kept token, in id order, whose cumulative mass first exceeds u.
// No sort of the vocabulary: top-k is a quickselect of the k-th largest logit, top-p a quickselect-style
// threshold search on the masses (3-way partition around a pivot; descend into the side holding the point
// where the cumulative mass reaches top_p; tokens with w ≤ (1 − top_p)·Σw / V are dropped up front, as all
// of them together weigh at most the tail top-p removes). Both are O(V) expected. The kept set is a value
// threshold w* plus how many tokens tied at w* (in id order) stay, so the draw walks the row in id order
// and the result depends only on the logits and the seed, never on the rest of the batch.
// A row with NaN or ±Inf is refused (InvalidDataException naming the index and value), as generation does.
// Scratch buffers (3 × V) are allocated on the first call and reused: no managed allocation afterwards.
using System.Globalization;
using System.Numerics.Tensors;
using PeftKernels.Models;

namespace PeftKernels.Engine;

/// <summary>Reusable scratch of <see cref="TokenSampler.Next(ReadOnlySpan{float}, SamplerScratch)"/> (3 × vocabulary floats/ints); one per thread.</summary>
public sealed class SamplerScratch
{
    internal float[] Weights { get; private set; } = [];

    internal float[] Values { get; private set; } = [];

    internal int[] Ids { get; private set; } = [];

    internal void Ensure(int vocab)
    {
        if (Weights.Length < vocab)
        {
            Weights = new float[vocab];
            Values = new float[vocab];
            Ids = new int[vocab];
        }
    }
}

/// <summary>
/// One sequence's sampler: greedy, or temperature then top-k then top-p sampling with the sequence's own seeded generator,
/// so its tokens for a given seed do not depend on what else is in the batch. Not thread-safe (one per sequence).
/// </summary>
public sealed class TokenSampler
{
    private const int SmallRange = 16;
    private readonly Random rng;
    private readonly int[] stops;
    private SamplerScratch? own;

    /// <summary>A sampler for <paramref name="parameters"/> (validated here); a null seed is drawn from <see cref="Random.Shared"/>.</summary>
    /// <exception cref="ArgumentException">A field of <paramref name="parameters"/> is out of range.</exception>
    public TokenSampler(SamplingParams parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        parameters.Validate();
        Params = parameters;
        Seed = parameters.Seed ?? Random.Shared.Next();
        rng = new Random(Seed);
        stops = parameters.StopTokenIds is null ? [] : [.. parameters.StopTokenIds];
    }

    /// <summary>The settings this sampler was built from.</summary>
    public SamplingParams Params { get; }

    /// <summary>The seed of this sequence's generator (the drawn one when <see cref="SamplingParams.Seed"/> is null).</summary>
    public int Seed { get; }

    /// <summary>Random numbers drawn so far: one per sampled token, none for greedy ones.</summary>
    public long Draws { get; private set; }

    /// <summary>Whether <paramref name="token"/> is one of the stop token ids.</summary>
    public bool IsStop(int token) => stops.AsSpan().Contains(token);

    /// <summary>The next token for <paramref name="logits"/> (one row, [vocab]), using scratch owned by this sampler.</summary>
    /// <exception cref="InvalidDataException">The row holds NaN or an infinity (index and value named).</exception>
    public int Next(ReadOnlySpan<float> logits) => Next(logits, own ??= new SamplerScratch());

    /// <summary>The next token for <paramref name="logits"/> (one row, [vocab]), using the caller's <paramref name="scratch"/>.</summary>
    /// <exception cref="InvalidDataException">The row holds NaN or an infinity (index and value named).</exception>
    public int Next(ReadOnlySpan<float> logits, SamplerScratch scratch)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        int vocab = logits.Length;
        if (vocab == 0)
        {
            throw new ArgumentException("the logits row is empty.", nameof(logits));
        }

        float max = TensorPrimitives.Max(logits);
        float min = TensorPrimitives.Min(logits);
        if (!float.IsFinite(max) || !float.IsFinite(min))
        {
            int bad = LlamaForCausalLM.FirstNonFinite(logits);
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"the logits are not finite: {logits[bad]} at vocabulary index {bad}"));
        }

        if (Params.IsGreedy)
        {
            return FirstEqual(logits, max);
        }

        var f = Filter(logits, max, scratch);
        var w = scratch.Weights.AsSpan(0, f.Count);
        double kept = 0;
        int seen = 0;
        foreach (float x in w)
        {
            if (x > f.Threshold || (x == f.Threshold && seen++ < f.TiesKept))
            {
                kept += x;
            }
        }

        double u = rng.NextDouble() * kept;
        Draws++;
        double acc = 0;
        int last = 0;
        seen = 0;
        for (int j = 0; j < w.Length; j++)
        {
            float x = w[j];
            if ((x > f.Threshold || (x == f.Threshold && seen++ < f.TiesKept)) && x > 0)
            {
                acc += x;
                last = j;
                if (u < acc)
                {
                    break;
                }
            }
        }

        return f.TopK ? scratch.Ids[last] : last;
    }

    /// <summary>The tokens sampling may return for <paramref name="logits"/> (finite; not greedy): true where kept by top-k and top-p.</summary>
    internal bool[] KeptMask(ReadOnlySpan<float> logits)
    {
        var scratch = new SamplerScratch();
        var f = Filter(logits, TensorPrimitives.Max(logits), scratch);
        var mask = new bool[logits.Length];
        int seen = 0;
        for (int j = 0; j < f.Count; j++)
        {
            float x = scratch.Weights[j];
            if (x > f.Threshold || (x == f.Threshold && seen++ < f.TiesKept))
            {
                mask[f.TopK ? scratch.Ids[j] : j] = true;
            }
        }

        return mask;
    }

    /// <summary>
    /// Temperature, top-k and top-p: fills scratch.Weights[0..Count) with w = exp((ℓ − max)/T) of the top-k candidates
    /// (ids in scratch.Ids when TopK, else the whole row in id order) and returns the top-p threshold w* and how many
    /// candidates tied at w* stay; a candidate is kept when w &gt; w*, or w = w* and fewer than TiesKept ties came before it.
    /// </summary>
    private (int Count, bool TopK, float Threshold, int TiesKept) Filter(ReadOnlySpan<float> logits, float max, SamplerScratch scratch)
    {
        int vocab = logits.Length;
        scratch.Ensure(vocab);
        int k = Params.TopK;
        bool topK = k > 0 && k < vocab;
        int m = vocab;
        var ids = scratch.Ids;
        var weights = scratch.Weights;
        if (topK)
        {
            var values = scratch.Values.AsSpan(0, vocab);
            logits.CopyTo(values);
            float kth = KthLargest(values, k);
            m = 0;
            for (int i = 0; i < vocab; i++)
            {
                if (logits[i] >= kth)
                {
                    ids[m] = i;
                    weights[m++] = logits[i];
                }
            }
        }
        else
        {
            logits.CopyTo(weights);
        }

        var w = weights.AsSpan(0, m);
        TensorPrimitives.Subtract(w, max, w);
        TensorPrimitives.Divide(w, Params.Temperature, w);
        TensorPrimitives.Exp(w, w);
        if (Params.TopP >= 1)
        {
            return (m, topK, float.NegativeInfinity, int.MaxValue);
        }

        double total = TensorPrimitives.Sum(w);
        double cutoff = (1 - (double)Params.TopP) * total / m * (1 - 1e-6);
        var candidates = scratch.Values;
        int n = 0;
        foreach (float x in w)
        {
            if (x > cutoff)
            {
                candidates[n++] = x;
            }
        }

        var (threshold, tiesKept) = NucleusThreshold(candidates.AsSpan(0, n), Params.TopP * total);
        return (m, topK, threshold, tiesKept);
    }

    /// <summary>The first index whose value equals <paramref name="max"/> (−0 and +0 equal, as torch.argmax).</summary>
    private static int FirstEqual(ReadOnlySpan<float> logits, float max)
    {
        for (int i = 0; i < logits.Length; i++)
        {
            if (logits[i] == max)
            {
                return i;
            }
        }

        return 0;
    }

    /// <summary>The <paramref name="k"/>-th largest value (1-based) of <paramref name="values"/>, which it reorders.</summary>
    internal static float KthLargest(Span<float> values, int k)
    {
        int lo = 0, hi = values.Length;
        for (int round = 0; ; round++)
        {
            if (hi - lo <= SmallRange || round > 64)
            {
                var range = values[lo..hi];
                range.Sort();
                return range[^k];
            }

            float pivot = Pivot(values, lo, hi);
            var (gtEnd, eqEnd) = Partition(values, lo, hi, pivot);
            int greater = gtEnd - lo, equal = eqEnd - gtEnd;
            if (k <= greater)
            {
                hi = gtEnd;
            }
            else if (k <= greater + equal)
            {
                return pivot;
            }
            else
            {
                k -= greater + equal;
                lo = eqEnd;
            }
        }
    }

    /// <summary>
    /// The nucleus of <paramref name="values"/> (masses, reordered) for <paramref name="target"/> = top_p · Σw: walking the
    /// values in descending order, a value stays while the mass before it is below the target. Returns the smallest kept
    /// value w* and how many of the values equal to w* stay (the rest of that tie group, and everything below, go).
    /// </summary>
    internal static (float Threshold, int TiesKept) NucleusThreshold(Span<float> values, double target)
    {
        int lo = 0, hi = values.Length;
        double above = 0;
        float floor = float.NegativeInfinity;
        for (int round = 0; lo < hi; round++)
        {
            if (hi - lo <= SmallRange || round > 64)
            {
                var range = values[lo..hi];
                range.Sort();
                for (int j = range.Length - 1; j >= 0;)
                {
                    float x = range[j];
                    int count = 0;
                    while (j >= 0 && range[j] == x)
                    {
                        count++;
                        j--;
                    }

                    var (done, stay) = TakeTies(ref above, target, x, count);
                    if (done)
                    {
                        return (x, stay);
                    }

                    floor = x;
                }

                break;
            }

            float pivot = Pivot(values, lo, hi);
            var (gtEnd, eqEnd) = Partition(values, lo, hi, pivot);
            double greater = 0;
            for (int i = lo; i < gtEnd; i++)
            {
                greater += values[i];
            }

            if (above + greater >= target)
            {
                hi = gtEnd;
                continue;
            }

            above += greater;
            var (found, kept) = TakeTies(ref above, target, pivot, eqEnd - gtEnd);
            if (found)
            {
                return (pivot, kept);
            }

            floor = pivot;
            lo = eqEnd;
        }

        // Only rounding gets here (the sum over all values fell short of the target): keep everything down to the floor.
        return (floor, int.MaxValue);
    }

    /// <summary>Adds tied values <paramref name="x"/> one by one while the mass is below the target; done when the group ends the nucleus.</summary>
    private static (bool Done, int Kept) TakeTies(ref double above, double target, float x, int count)
    {
        int t = 0;
        while (t < count && above < target)
        {
            above += x;
            t++;
        }

        return (t < count || above >= target, t);
    }

    private static float Pivot(Span<float> values, int lo, int hi)
    {
        float a = values[lo], b = values[lo + ((hi - lo) / 2)], c = values[hi - 1];
        return Math.Max(Math.Min(a, b), Math.Min(Math.Max(a, b), c));
    }

    /// <summary>3-way partition of [lo, hi) into values &gt; pivot, = pivot, &lt; pivot; returns the ends of the first two parts.</summary>
    private static (int GtEnd, int EqEnd) Partition(Span<float> values, int lo, int hi, float pivot)
    {
        int lt = lo, i = lo, gt = hi;
        while (i < gt)
        {
            float x = values[i];
            if (x > pivot)
            {
                values[i++] = values[lt];
                values[lt++] = x;
            }
            else if (x < pivot)
            {
                values[i] = values[--gt];
                values[gt] = x;
            }
            else
            {
                i++;
            }
        }

        return (lt, gt);
    }
}
