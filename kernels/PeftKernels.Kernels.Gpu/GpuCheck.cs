// Argument checks of the public GPU launchers beyond the CPU kernels' Check (whose
// NonNegative / Positive / Length they call directly, so the messages are the same).
namespace PeftKernels.Kernels.Gpu;

internal static class GpuCheck
{
    public static void NotNull(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (accelerator.IsDisposed)
        {
            throw new ObjectDisposedException(nameof(accelerator), "the accelerator has been disposed.");
        }
    }

    /// <summary>Length check of a view that may also be empty (an optional input or a skipped output).</summary>
    public static void LengthOrEmpty(string name, long actual, long expected, string formula)
    {
        if (actual != 0)
        {
            Check.Length(name, actual, expected, formula);
        }
    }

    /// <summary>Element counts are indexed with 32-bit ints inside the kernels.</summary>
    public static void FitsInt(long count, string what)
    {
        if (count > int.MaxValue)
        {
            throw new ArgumentException($"{what} has {count} elements; the GPU kernels index with 32-bit ints (at most {int.MaxValue}).", what);
        }
    }

    public static void Require(bool condition, string name, string message)
    {
        if (!condition)
        {
            throw new ArgumentException(message, name);
        }
    }
}
