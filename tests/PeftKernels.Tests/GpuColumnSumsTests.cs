// ColumnSumsKernels.Add (bias gradients: db += scale·Σ_i dy_i) against a double reference.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuColumnSumsTests(GpuFixture gpu)
{
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
}
