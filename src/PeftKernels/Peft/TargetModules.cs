// PEFT's module matching (docs/formats/peft-adapters.md#target-matching): a list entry matches a module whose full name
// equals it or ends with "." + entry; a string is a regex that must match the full name;
// "all-linear" is every Linear except the output layer (lm_head). layers_to_transform keeps
// only modules under "<layers_pattern>.<i>." with i in the list.
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PeftKernels.Peft;

/// <summary>target_modules / exclude_modules: a list of names, one regex, or "all-linear".</summary>
public sealed record TargetModules
{
    /// <summary>The "all-linear" shorthand.</summary>
    public const string AllLinear = "all-linear";

    private TargetModules(IReadOnlyList<string>? names, string? regex)
    {
        Names = names;
        Regex = regex;
    }

    /// <summary>The list form, or null.</summary>
    public IReadOnlyList<string>? Names { get; }

    /// <summary>The regex (or "all-linear") form, or null.</summary>
    public string? Regex { get; }

    /// <summary>True for "all-linear".</summary>
    public bool IsAllLinear => Regex == AllLinear;

    /// <summary>A list of module names.</summary>
    public static TargetModules FromList(params string[] names)
    {
        ArgumentNullException.ThrowIfNull(names);
        return new TargetModules([.. names], null);
    }

    /// <summary>A regex over full module names, or "all-linear".</summary>
    public static TargetModules FromRegex(string regex)
    {
        ArgumentException.ThrowIfNullOrEmpty(regex);
        return new TargetModules(null, regex);
    }

    /// <summary>Parses a command-line value: "all-linear", a comma-separated list, or "re:REGEX".</summary>
    public static TargetModules Parse(string text)
    {
        ArgumentException.ThrowIfNullOrEmpty(text);
        if (text == AllLinear)
        {
            return FromRegex(AllLinear);
        }

        return text.StartsWith("re:", StringComparison.Ordinal)
            ? FromRegex(text[3..])
            : FromList([.. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]);
    }

    /// <summary>True when the module named <paramref name="fullName"/> (a Linear unless stated) matches.</summary>
    public bool Matches(string fullName, bool isOutputLayer = false)
    {
        if (IsAllLinear)
        {
            return !isOutputLayer;
        }

        if (Regex != null)
        {
            return System.Text.RegularExpressions.Regex.IsMatch(fullName, $"^(?:{Regex})$", RegexOptions.CultureInvariant);
        }

        return Names!.Any(n => fullName == n || fullName.EndsWith("." + n, StringComparison.Ordinal));
    }

    /// <summary>Writes the JSON form: a string or an array of strings (sorted, as PEFT stores a set).</summary>
    public void WriteTo(Utf8JsonWriter json)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (Regex != null)
        {
            json.WriteStringValue(Regex);
            return;
        }

        json.WriteStartArray();
        foreach (string n in Names!.Order(StringComparer.Ordinal))
        {
            json.WriteStringValue(n);
        }

        json.WriteEndArray();
    }

    /// <summary>Reads a string or array-of-strings JSON value; null for JSON null.</summary>
    public static TargetModules? Read(JsonElement value, string field)
    {
        return value.ValueKind switch
        {
            JsonValueKind.Null or JsonValueKind.Undefined => null,
            JsonValueKind.String => FromRegex(CheckRegex(value.GetString()!, field)),
            JsonValueKind.Array => FromList([.. value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String
                ? e.GetString()!
                : throw ConfigJson.WrongType(field, "a string, a list of strings or null", value))]),
            _ => throw ConfigJson.WrongType(field, "a string, a list of strings or null", value),
        };
    }

    /// <summary>Returns <paramref name="pattern"/> when it is a valid .NET regular expression.</summary>
    /// <exception cref="InvalidDataException">It is not; the message names <paramref name="field"/>.</exception>
    internal static string CheckRegex(string pattern, string field)
    {
        try
        {
            _ = new Regex(pattern, RegexOptions.CultureInvariant);
            return pattern;
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{field} \"{(pattern.Length > 60 ? pattern[..60] + "…" : pattern)}\" is not a valid regular expression: {e.Message}", e);
        }
    }

    /// <summary>Layer index of a module under "…{layersPattern}.{i}.…", or null.</summary>
    public static int? LayerIndex(string fullName, string? layersPattern)
    {
        string pattern = layersPattern ?? "layers|h|blocks|layer";
        var m = System.Text.RegularExpressions.Regex.Match(fullName, $@"(?:^|\.)(?:{pattern})\.(\d+)\.");
        return m.Success ? int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : null;
    }

    /// <summary>The first key of a rank/alpha pattern that matches the module (PEFT: "(^|.*\.)key$").</summary>
    public static string? PatternKey(IEnumerable<string> keys, string fullName) =>
        keys.FirstOrDefault(k => System.Text.RegularExpressions.Regex.IsMatch(fullName, $@"(^|.*\.){k}$", RegexOptions.CultureInvariant));
}
