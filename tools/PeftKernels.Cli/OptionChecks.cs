// The up-front checks of numeric options that every verb shares. Each action reads its numeric
// options through these first thing, before it loads a model, reads data or trains, so a bad value
// costs nothing and is reported as one line that names the option, the expected range and the
// value given (an ArgumentException, which Cli.Guard prints as "error: ..." with exit code 1).
using System.CommandLine;
using System.Globalization;

namespace PeftKernels.Cli;

/// <summary>Range checks of numeric options, with messages that name the option, the range and the value.</summary>
internal static class OptionChecks
{
    /// <summary>The shared `--threads` option: kernel threads, 0 = all processors.</summary>
    internal static Option<int> ThreadsOption() =>
        new("--threads") { Description = "Kernel threads (0 = all processors).", DefaultValueFactory = _ => 0 };

    /// <summary>A `--threads` value: 0 (all processors) or a positive count.</summary>
    internal static int Threads(this ParseResult parse, Option<int> option) => parse.AtLeast(option, 0, " (0 = all processors)");

    /// <summary>Every value of a repeated `--threads` option: 0 (all processors) or a positive count.</summary>
    internal static int[] Threads(this ParseResult parse, Option<int[]> option)
    {
        int[] values = parse.GetValue(option) ?? [];
        foreach (int v in values)
        {
            Check(v >= 0, option, ">= 0 (0 = all processors)", v.ToString(CultureInfo.InvariantCulture));
        }

        return values;
    }

    /// <summary>An integer option that must be at least <paramref name="min"/>.</summary>
    internal static int AtLeast(this ParseResult parse, Option<int> option, int min, string note = "")
    {
        int v = parse.GetValue(option);
        Check(v >= min, option, $">= {min}{note}", v.ToString(CultureInfo.InvariantCulture));
        return v;
    }

    /// <summary>A finite number in [<paramref name="min"/>, <paramref name="max"/>], each end open when its flag says so.</summary>
    internal static double InRange(this ParseResult parse, Option<double> option, double min, double max, bool minOpen = false, bool maxOpen = false) =>
        InRange(option, parse.GetValue(option), min, max, minOpen, maxOpen);

    /// <summary>A finite single-precision number in [<paramref name="min"/>, <paramref name="max"/>], each end open when its flag says so.</summary>
    internal static float InRange(this ParseResult parse, Option<float> option, double min, double max, bool minOpen = false, bool maxOpen = false) =>
        (float)InRange(option, parse.GetValue(option), min, max, minOpen, maxOpen);

    private static double InRange(Option option, double v, double min, double max, bool minOpen, bool maxOpen)
    {
        bool inside = double.IsFinite(v) && (minOpen ? v > min : v >= min) && (maxOpen ? v < max : v <= max);
        string range = double.IsNegativeInfinity(min) && double.IsPositiveInfinity(max) ? "finite"
            : double.IsPositiveInfinity(max) ? $"{(minOpen ? ">" : ">=")} {Number(min)} and finite"
            : $"in {(minOpen ? "(" : "[")}{Number(min)}, {Number(max)}{(maxOpen ? ")" : "]")}";
        Check(inside, option, range, Number(v));
        return v;
    }

    private static string Number(double v) => v.ToString(CultureInfo.InvariantCulture);

    private static void Check(bool ok, Option option, string expected, string actual)
    {
        if (!ok)
        {
            throw new ArgumentException($"{option.Name} must be {expected}; got {actual}.");
        }
    }
}
