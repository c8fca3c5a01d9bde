// Argument checks of the public GPU launchers: the same messages as the CPU kernels' checks,
// naming the view, the expected length and the formula it comes from.
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

    public static void NonNegative(int value, string name)
    {
        if (value < 0)
        {
            throw new ArgumentException($"{name} must be >= 0, got {value}.", name);
        }
    }

    public static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} must be > 0, got {value}.", name);
        }
    }

    public static void Length(string name, long actual, long expected, string formula)
    {
        if (actual != expected)
        {
            throw new ArgumentException($"{name} has length {actual}; expected {expected} ({formula}).", name);
        }
    }

    /// <summary>Length check of a view that may also be empty (an optional input or a skipped output).</summary>
    public static void LengthOrEmpty(string name, long actual, long expected, string formula)
    {
        if (actual != 0)
        {
            Length(name, actual, expected, formula);
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
