// The CPU embedding kernel against its double reference: gather from fp32, bf16 and fp16 tables
// (widening is exact, so the rows match bit for bit), and the token-order scatter-add backward with
// repeated ids (accumulating into a non-zero dw), on awkward sizes; and the argument checks.
using PeftKernels.Kernels.Reference;
using Xunit;
using CpuEmbedding = PeftKernels.Kernels.Cpu.Embedding;

namespace PeftKernels.Tests;

public class EmbeddingTests
{
    public static TheoryData<int, int, int> Shapes() => new()
    {
        { 1, 1, 1 },
        { 3, 7, 5 },
        { 17, 13, 33 },
        { 64, 50, 127 },
        { 0, 4, 3 },
    };

    private static int[] Ids(int n, int vocab, int seed) =>
        [.. Enumerable.Range(0, n).Select(t => (int)(((t * 7919L) + (seed * 31)) % Math.Max(1, vocab / 2 + 1)) % vocab)];

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ForwardGathersRowsOfEveryStorage(int n, int vocab, int dim)
    {
        var ids = Ids(n, vocab, 1);
        var w = TestUtil.Random(vocab * dim, 2);
        var expected = EmbeddingReference.Forward(TestUtil.ToDouble(w), ids, vocab, dim);

        var y = Enumerable.Repeat(float.NaN, n * dim).ToArray();
        CpuEmbedding.Forward(w, ids, y, vocab, dim);
        TestUtil.AssertClose(y, expected, 0, 0, "fp32");

        var bf16 = TestUtil.RandomBf16(vocab * dim, 3);
        var expectedBf16 = EmbeddingReference.Forward(TestUtil.ToDouble(TestUtil.Widen(bf16)), ids, vocab, dim);
        CpuEmbedding.Forward(bf16, ids, y, vocab, dim);
        TestUtil.AssertClose(y, expectedBf16, 0, 0, "bf16");

        var f16 = w.Select(v => (Half)v).ToArray();
        var expectedF16 = EmbeddingReference.Forward([.. f16.Select(v => (double)(float)v)], ids, vocab, dim);
        CpuEmbedding.Forward(f16, ids, y, vocab, dim);
        TestUtil.AssertClose(y, expectedF16, 0, 0, "fp16");
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void BackwardAccumulatesRepeatedIdsInTokenOrder(int n, int vocab, int dim)
    {
        var ids = Ids(n, vocab, 4);
        var dy = TestUtil.Random(n * dim, 5);
        var start = TestUtil.Random(vocab * dim, 6);
        var reference = EmbeddingReference.Backward(TestUtil.ToDouble(dy), ids, vocab, dim);
        var expected = reference.Select((v, i) => v + start[i]).ToArray();

        var dw = (float[])start.Clone();
        CpuEmbedding.Backward(dy, ids, dw, vocab, dim);
        int repeats = n == 0 ? 1 : ids.GroupBy(id => id).Max(g => g.Count()) + 1;
        TestUtil.AssertClose(dw, expected, TestUtil.DotAtol(repeats) * 2, 1e-6, "dw");

        // Token order, in fp32: the same additions as a plain loop over the tokens.
        var loop = (float[])start.Clone();
        for (int t = 0; t < n; t++)
        {
            for (int j = 0; j < dim; j++)
            {
                loop[(ids[t] * dim) + j] += dy[(t * dim) + j];
            }
        }

        Assert.Equal(loop, dw);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var w = new float[6];
        var y = new float[4];
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => CpuEmbedding.Forward(w, [1, 3], y, 3, 2));
        Assert.Contains("token id 3 at position 1 is outside the vocabulary [0, 3)", range.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuEmbedding.Backward(y, [-1, 0], w, 3, 2));
        var e = Assert.Throws<ArgumentException>(() => CpuEmbedding.Forward(w, [1, 2], new float[5], 3, 2));
        Assert.Equal("y", e.ParamName);
        Assert.Contains("y has length 5; expected 4 (n·dim)", e.Message);
        e = Assert.Throws<ArgumentException>(() => CpuEmbedding.Forward(new float[5], [1, 2], y, 3, 2));
        Assert.Equal("weight", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => CpuEmbedding.Backward(new float[3], [1, 2], w, 3, 2));
        Assert.Equal("dy", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => CpuEmbedding.Backward(y, [1, 2], new float[7], 3, 2));
        Assert.Equal("dw", e.ParamName);
    }
}
