// How a benchmark states the work of one operation, so the GFLOP/s and GB/s columns can divide
// it by the measured time: Flops is the arithmetic of one call (2 per multiply-add), Bytes is
// the minimum traffic of one call (every operand read once, every result written once, fp32 =
// 4 bytes, bf16 = 2 bytes). Both depend only on the method and its [Params]/[Arguments].
using BenchmarkDotNet.Running;

namespace PeftKernels.Bench;

/// <summary>A benchmark class that states the FLOPs and bytes moved of each of its cases.</summary>
/// <remarks>Created with its parameterless constructor, outside any setup, so it must compute from the case alone.</remarks>
public interface IWorkload
{
    /// <summary>Floating-point operations of one invocation; 0 when not meaningful.</summary>
    double Flops(BenchmarkCase benchmarkCase);

    /// <summary>Minimum bytes read plus written by one invocation; 0 when not meaningful.</summary>
    double Bytes(BenchmarkCase benchmarkCase);
}

internal static class Workload
{
    /// <summary>The benchmark method's name.</summary>
    public static string Method(this BenchmarkCase benchmarkCase) => benchmarkCase.Descriptor.WorkloadMethod.Name;

    /// <summary>A [Params] or [Arguments] value of the case.</summary>
    public static T Param<T>(this BenchmarkCase benchmarkCase, string name) => (T)benchmarkCase.Parameters[name];

    /// <summary>Uniform values in [-1, 1), the same for the same seed.</summary>
    public static float[] Random(long count, int seed)
    {
        var rng = new Random(seed);
        var data = new float[count];
        for (long i = 0; i < count; i++)
        {
            data[i] = (rng.NextSingle() * 2f) - 1f;
        }

        return data;
    }
}
