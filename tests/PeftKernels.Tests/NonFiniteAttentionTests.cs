// Attention with NaN and ±Inf operands against the double reference, which sums over the visible
// keys only: masked keys never contribute, whatever they hold (a NaN value at a future position
// inside a 64-key tile reaches no earlier query, in the outputs nor in the gradients), an infinite
// q, k or v gives what the reference gives (NaN rows where softmax meets ∞ − ∞), and NaN in any
// backward operand reaches exactly the gradients that depend on it. Every SIMD path, packed and
// decode (≤ 4 queries) paths, grouped-query heads, a key offset, and tiles of 64 keys crossed.
// Cross-entropy backward likewise: a non-finite logit makes its whole row's gradient NaN.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The CPU attention kernels give the reference's NaN / ±Inf pattern for poisoned inputs.</summary>
public class NonFiniteAttentionTests
{
    /// <summary>(batch, tq, tk, heads, kvHeads, headDim): within one tile, across tiles, a key offset, a decode step.</summary>
    private static readonly (int B, int Tq, int Tk, int H, int Hkv, int D)[] Shapes =
    [
        (1, 7, 7, 2, 1, 8),
        (1, 70, 70, 4, 2, 16),
        (2, 40, 100, 2, 2, 12),
        (1, 3, 67, 2, 1, 8),
    ];

    public static TheoryData<SimdPath, string, float> Cases()
    {
        var data = new TheoryData<SimdPath, string, float>();
        foreach (var path in TestUtil.Paths)
        {
            foreach (string target in new[] { "q", "k", "v" })
            {
                foreach (float poison in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                {
                    data.Add(path, target, poison);
                }
            }

            data.Add(path, "dO", float.NaN);
        }

        return data;
    }

    /// <summary>Each element: NaN where the reference is NaN, the same infinity where it is infinite, else finite and close.</summary>
    internal static void AssertPattern(float[] actual, double[] expected, double tolerance, string what)
    {
        for (int i = 0; i < actual.Length; i++)
        {
            double e = expected[i];
            float a = actual[i];
            bool ok = double.IsNaN(e) ? float.IsNaN(a)
                : double.IsInfinity(e) ? a == e
                : float.IsFinite(a) && Math.Abs(a - e) <= tolerance * (1 + Math.Abs(e));
            Assert.True(ok, $"{what}: element {i} is {a}, the reference gives {e}");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardAndBackwardGiveTheReferencesNonFinitePattern(SimdPath path, string target, float poison)
    {
        var options = new KernelOptions(2, path);
        foreach (var (b, tq, tk, h, hkv, d) in Shapes)
        {
            float scale = 1f / MathF.Sqrt(d);
            var q = TestUtil.Random(b * tq * h * d, 1);
            var k = TestUtil.Random(b * tk * hkv * d, 2);
            var v = TestUtil.Random(b * tk * hkv * d, 3);
            var dO = TestUtil.Random(q.Length, 4);
            var poisoned = target switch { "q" => q, "k" => k, "v" => v, _ => dO };

            // One poisoned element in the middle of the last sequence: every earlier query of that sequence is before it.
            int positions = target is "q" or "dO" ? tq : tk, width = poisoned.Length / (b * positions);
            int at = (((b - 1) * positions) + (positions / 2)) * width;
            poisoned[at + (width / 2)] = poison;
            string what = $"{target}={poison} [{b}, {tq}, {tk}, {h}, {hkv}, {d}] {path}";

            var o = new float[q.Length];
            var lse = new float[b * h * tq];
            Attention.Forward(q, k, v, o, lse, b, tq, tk, h, hkv, d, scale, options);
            var (oRef, lseRef) = AttentionReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), b, tq, tk, h, hkv, d, scale);
            AssertPattern(o, oRef, 1e-4, what + " o");
            AssertPattern(lse, lseRef, 1e-4, what + " lse");
            if (float.IsNaN(poison))
            {
                var (dq, dk, dv) = (new float[q.Length], new float[k.Length], new float[v.Length]);
                Attention.Backward(dO, q, k, v, o, lse, dq, dk, dv, b, tq, tk, h, hkv, d, scale, options);
                var (dqRef, dkRef, dvRef) = AttentionReference.Backward(TestUtil.ToDouble(dO), TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v),
                    b, tq, tk, h, hkv, d, scale);
                AssertPattern(dq, dqRef, 1e-3, what + " dq");
                AssertPattern(dk, dkRef, 1e-3, what + " dk");
                AssertPattern(dv, dvRef, 1e-3, what + " dv");
                Assert.Contains(dq.Concat(dk).Concat(dv), float.IsNaN);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void ANaNValueAtAMaskedKeyInsideATileLeavesEarlierQueriesBitIdentical(SimdPath path)
    {
        // t = 20 queries and keys: one 64-key tile, so every key is in the tile of every query.
        const int t = 20, heads = 2, d = 8, at = 12;
        var options = new KernelOptions(1, path);
        var q = TestUtil.Random(t * heads * d, 1);
        var k = TestUtil.Random(t * d, 2);
        var v = TestUtil.Random(t * d, 3);
        var dO = TestUtil.Random(q.Length, 4);
        float[] Run(float[] values, out float[] dq, out float[] dk, out float[] dv)
        {
            var o = new float[q.Length];
            var lse = new float[heads * t];
            Attention.Forward(q, k, values, o, lse, 1, t, t, heads, 1, d, 0.5f, options);
            (dq, dk, dv) = (new float[q.Length], new float[k.Length], new float[v.Length]);
            Attention.Backward(dO, q, k, values, o, lse, dq, dk, dv, 1, t, t, heads, 1, d, 0.5f, options);
            return o;
        }

        var clean = Run(v, out var dqClean, out _, out var dvClean);
        var nanV = (float[])v.Clone();
        nanV[(at * d) + 3] = float.NaN;
        var poisoned = Run(nanV, out var dq, out var dk, out var dv);
        int before = at * heads * d;
        Assert.Equal(clean[..before], poisoned[..before]);
        Assert.Equal(dqClean[..before], dq[..before]);
        Assert.All(poisoned[before..].Where((_, i) => i % d == 3), x => Assert.True(float.IsNaN(x)));
        Assert.Equal(dvClean, dv);
        Assert.All(dk, x => Assert.True(float.IsNaN(x)));
        Assert.All(dq[before..], x => Assert.True(float.IsNaN(x)));
    }

    public static TheoryData<SimdPath> Paths() => new(TestUtil.Paths);

    /// <summary>Cross-entropy backward, dlogits = gradScale·(softmax − onehot): a NaN or +Inf logit makes its row's gradient NaN (as PyTorch), other rows untouched.</summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void CrossEntropyBackwardCarriesANonFiniteLogitToItsRow(SimdPath path)
    {
        var options = new KernelOptions(1, path);
        foreach (float poison in new[] { float.NaN, float.PositiveInfinity })
        {
            foreach (int vocab in new[] { 50, 5000 })
            {
                int[] labels = [1, 2, 3];
                var logits = TestUtil.Random(3 * vocab, vocab);
                logits[vocab + (vocab / 3)] = poison;
                var lse = new float[3];
                CrossEntropy.Forward(logits, labels, lse, 3, vocab, options);
                var expected = CrossEntropyReference.Backward(TestUtil.ToDouble(logits), labels, 0.5, 3, vocab);
                CrossEntropy.BackwardInPlace(logits, labels, lse, 0.5f, 3, vocab, options);
                string what = $"cross-entropy {poison} vocab {vocab} {path}";
                AssertPattern(logits, expected, 1e-4, what);
                Assert.All(logits.AsSpan(vocab, vocab).ToArray(), x => Assert.True(float.IsNaN(x), what));
            }
        }
    }
}
