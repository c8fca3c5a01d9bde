// Argument checks shared by every public kernel entry point, CPU and GPU, so an op rejects a bad
// argument with the same message on both devices: the argument's name, what was expected and what
// was given (e.g. "x has length 6; expected 8 (n·dim).").
namespace PeftKernels.Kernels;

/// <summary>Argument checks shared by the public kernel entry points.</summary>
internal static class Check
{
    public static void NonNegative(int value, string name)
    {
        if (value < 0)
        {
            throw new ArgumentException($"{name} must be >= 0, got {value}.", name);
        }
    }

    /// <summary>Each dim is ≥ 0, checked in order (the first failing one throws).</summary>
    public static void NonNegative(params ReadOnlySpan<(int Value, string Name)> dims)
    {
        foreach (var (value, name) in dims)
        {
            NonNegative(value, name);
        }
    }

    public static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} must be > 0, got {value}.", name);
        }
    }

    /// <summary>Each dim is > 0, checked in order (the first failing one throws).</summary>
    public static void Positive(params ReadOnlySpan<(int Value, string Name)> dims)
    {
        foreach (var (value, name) in dims)
        {
            Positive(value, name);
        }
    }

    public static void Length(string name, long actual, long expected, string formula)
    {
        if (actual != expected)
        {
            throw new ArgumentException($"{name} has length {actual}; expected {expected} ({formula}).", name);
        }
    }

    /// <summary>Length check of an argument that may also be empty (an optional input or a skipped output).</summary>
    public static void LengthOrEmpty(string name, long actual, long expected, string formula)
    {
        if (actual != 0)
        {
            Length(name, actual, expected, formula);
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
