using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The GPU kernels of full training on a device: embedding backward, bias column sums, gradient norm and scaling.</summary>
[Collection("Gpu")]
public class GpuTrainingKernelTests(GpuFixture gpu)
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

    /// <summary>db_j += scale·Σ_i dy_ij against a double reference: n fp32 additions (DotAtol).</summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(17, 33)]
    [InlineData(9, 70)]
    public void ColumnSumsMatchReference(int n, int dim)
    {
        var dy = TestUtil.Random(n * dim, 4);
        var expected = new double[dim];
        for (int i = 0; i < n * dim; i++)
        {
            expected[i % dim] += dy[i];
        }

        using var ddy = gpu.Upload(dy);
        using var db = gpu.Upload(new float[dim]);
        ColumnSumsKernels.Add(gpu.Accelerator, ddy.View, db.View, n, dim);
        TestUtil.AssertClose(gpu.Download(db.View), expected, TestUtil.DotAtol(n), 1e-6, "db");

        // Accumulating into a non-zero gradient, scaled (the LoRA bias: db += s·Σ dy).
        var start = TestUtil.Random(dim, 5);
        using var db2 = gpu.Upload(start);
        ColumnSumsKernels.Add(gpu.Accelerator, ddy.View, db2.View, n, dim, 0.37f);
        TestUtil.AssertClose(gpu.Download(db2.View), [.. expected.Select((v, j) => start[j] + (0.37 * v))], TestUtil.DotAtol(n), 1e-6, "db scaled");
    }

    /// <summary>
    /// Σ x² in double on both sides, only the grouping differs (double rounding, ~1e-16 per addition): 1e-12 relative.
    /// 70 000 elements take several groups and several elements per thread. Scale is one IEEE multiply: bit-identical.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(33)]
    [InlineData(4097)]
    [InlineData(70_000)]
    public void SumOfSquaresAndScaleMatchTheCpu(int count)
    {
        var x = TestUtil.Random(count, 5);
        using var dx = gpu.Upload(x);
        double expected = AdamW.SumOfSquares(x);
        Assert.Equal(expected, AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View), Math.Max(1e-12 * expected, 1e-300));
        Assert.Equal(AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View), AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View));

        AdamWKernels.Scale(gpu.Accelerator, dx.View, 0.37f);
        AdamW.Scale(x, 0.37f);
        Assert.Equal(x, gpu.Download(dx.View));
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
