// EmbeddingKernels.Backward against the CPU autograd's scatter-add; BadInputsAreNamed also covers
// the argument checks of the ColumnSums and AdamW Scale launchers (one test, kept whole).

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuEmbeddingTests(GpuFixture gpu)
{
    /// <summary>The CPU autograd's scatter-add: each row starts at 0 and adds dy rows in token order (fp32).</summary>
    private static float[] EmbeddingBackwardReference(float[] dy, int[] ids, int vocab, int dim)
    {
        var dw = new float[vocab * dim];
        for (int t = 0; t < ids.Length; t++)
        {
            for (int j = 0; j < dim; j++)
            {
                dw[(ids[t] * dim) + j] += dy[(t * dim) + j];
            }
        }

        return dw;
    }

    /// <summary>The same additions in the same order as the CPU loop: bit-identical, repeated ids included, absent rows exactly 0.</summary>
    [Theory]
    [InlineData(new int[0], 5, 3)]
    [InlineData(new[] { 2 }, 5, 1)]
    [InlineData(new[] { 4, 1, 4, 0, 4, 1, 3 }, 6, 33)]
    [InlineData(new[] { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, 2, 7)]
    public void EmbeddingBackwardIsTheCpuScatterAdd(int[] ids, int vocab, int dim)
    {
        var dy = TestUtil.Random(ids.Length * dim, 3);
        using var ddy = gpu.Upload(dy);
        using var dw = gpu.Poisoned(vocab * dim);
        EmbeddingKernels.Backward(gpu.Accelerator, ddy.View, ids, dw.View, vocab, dim);
        Assert.Equal(EmbeddingBackwardReference(dy, ids, vocab, dim), gpu.Download(dw.View));
    }

    [Fact]
    public void BadInputsAreNamed()
    {
        using var v4 = gpu.Upload(new float[4]);
        using var v3 = gpu.Upload(new float[3]);
        var range = Assert.Throws<ArgumentOutOfRangeException>(() => EmbeddingKernels.Backward(gpu.Accelerator, v4.View, [1, 2], v4.View, 2, 2));
        Assert.Contains("token id 2 at position 1 is outside the vocabulary [0, 2)", range.Message);
        var e = Assert.Throws<ArgumentException>(() => EmbeddingKernels.Backward(gpu.Accelerator, v4.View, [1, 0], v3.View, 2, 2));
        Assert.Equal("dw", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => EmbeddingKernels.Backward(gpu.Accelerator, v3.View, [1, 0], v4.View, 2, 2));
        Assert.Equal("dy", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => ColumnSumsKernels.Add(gpu.Accelerator, v4.View, v3.View, 2, 2));
        Assert.Equal("dst", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => AdamWKernels.Scale(gpu.Accelerator, v4.View, float.NaN));
        Assert.Equal("factor", e.ParamName);
    }
}
