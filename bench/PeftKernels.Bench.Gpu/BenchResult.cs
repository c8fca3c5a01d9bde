// What a GPU benchmark body hands back: one row per measured kernel (median time, throughput, the
// comparison with its baseline and target), and notes for what could not be measured. The GPU
// runner's Report implements IBenchReport and writes the rows to results.json and results.md.
namespace PeftKernels.Bench.Gpu;

/// <summary>One benchmark row.</summary>
/// <param name="Name">What was timed.</param>
/// <param name="Shape">The problem size, as text.</param>
/// <param name="MedianMs">Median milliseconds of one launch (or one generation, one training step).</param>
/// <param name="Gflops">Useful GFLOP/s, or null where not meaningful.</param>
/// <param name="GBps">Bytes moved per second in GB/s, or null where not meaningful.</param>
/// <param name="Comparison">The baseline, ratio and target, as text.</param>
public sealed record BenchResult(string Name, string Shape, double MedianMs, double? Gflops, double? GBps, string Comparison);

/// <summary>Where the benchmark bodies put their rows and notes.</summary>
public interface IBenchReport
{
    /// <summary>Adds one benchmark row.</summary>
    /// <param name="bench">The row.</param>
    void Add(BenchResult bench);

    /// <summary>Adds a note (a skipped comparison, a failed benchmark).</summary>
    /// <param name="note">The note.</param>
    void Note(string note);
}
