// Long lists in error and warning messages: the first few items, then how many more there are, so
// a checkpoint that disagrees with its config in every layer gives a readable line, not kilobytes.
using System.Globalization;

namespace PeftKernels.IO;

/// <summary>Joins the first few items of a list of problems and counts the rest.</summary>
public static class ProblemList
{
    /// <summary>Items shown before the rest are only counted.</summary>
    public const int Shown = 5;

    /// <summary>"a; b; c; d; e; … and 37 more" (all items when there are at most <paramref name="shown"/>).</summary>
    public static string Join<T>(IReadOnlyCollection<T> items, int shown = Shown)
    {
        ArgumentNullException.ThrowIfNull(items);
        string text = string.Join("; ", items.Take(shown));
        return items.Count > shown ? string.Create(CultureInfo.InvariantCulture, $"{text}; … and {items.Count - shown} more") : text;
    }

    /// <summary>
    /// "N problems: " followed by each non-empty group cut by <see cref="Join{T}"/> (the first few of every kind, e.g. shape
    /// mismatches, missing and unexpected tensors, so one kind never hides another).
    /// </summary>
    public static string CountGroups(string noun, params IReadOnlyCollection<string>[] groups)
    {
        ArgumentNullException.ThrowIfNull(groups);
        int total = groups.Sum(g => g.Count);
        string text = string.Join("; ", groups.Where(g => g.Count > 0).Select(g => Join(g)));
        return string.Create(CultureInfo.InvariantCulture, $"{total} {noun}{(total == 1 ? "" : "s")}: {text}");
    }

    /// <summary>"N problem(s): " followed by <see cref="Join{T}"/>.</summary>
    public static string Count<T>(IReadOnlyCollection<T> items, string noun, int shown = Shown)
    {
        ArgumentNullException.ThrowIfNull(items);
        return string.Create(CultureInfo.InvariantCulture, $"{items.Count} {noun}{(items.Count == 1 ? "" : "s")}: {Join(items, shown)}");
    }
}
