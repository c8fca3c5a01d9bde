using System.Globalization;

namespace PeftKernels.Serving.Jinja;

/// <summary>
/// The filters the chat templates use (<c>x | name(args)</c>): trim, length/count, upper, lower, capitalize, title,
/// tojson, join, first, last, default/d, safe, string, items, replace, list, int, float, abs, reverse, map
/// (attribute=), selectattr, rejectattr. An unknown filter is a syntax error when the template is parsed.
/// </summary>
internal static class JinjaFilters
{
    private delegate object? Filter(object? value, List<object?> args, Dictionary<string, object?> kwargs);

    private static readonly Dictionary<string, Filter> All = new(StringComparer.Ordinal)
    {
        ["trim"] = (v, a, k) => Text(v).Trim(Arg(a, k, 0, "chars") is string c ? c.ToCharArray() : null),
        ["length"] = (v, _, _) => JinjaOps.Length(v),
        ["count"] = (v, _, _) => JinjaOps.Length(v),
        ["upper"] = (v, _, _) => Text(v).ToUpperInvariant(),
        ["lower"] = (v, _, _) => Text(v).ToLowerInvariant(),
        ["capitalize"] = (v, _, _) => Capitalize(Text(v)),
        ["title"] = (v, _, _) => Title(Text(v)),
        ["tojson"] = (v, a, k) => JinjaJson.Serialize(v, Arg(a, k, 0, "indent"), Arg(a, k, 99, "sort_keys") is true),
        ["join"] = Join,
        ["first"] = (v, _, _) => JinjaOps.Iterate(v) is { Count: > 0 } l ? l[0] : new JinjaUndefined("first of an empty sequence"),
        ["last"] = (v, _, _) => JinjaOps.Iterate(v) is { Count: > 0 } l ? l[^1] : new JinjaUndefined("last of an empty sequence"),
        ["default"] = Default,
        ["d"] = Default,
        ["safe"] = (v, _, _) => v,
        ["string"] = (v, _, _) => JinjaOps.Str(v),
        ["items"] = (v, _, _) => v switch
        {
            Dictionary<string, object?> d => JinjaMembers.Items(d),
            JinjaUndefined => new List<object?>(),
            _ => throw JinjaOps.Error($"the items filter needs a dict, not a {JinjaOps.Describe(v)}"),
        },
        ["replace"] = (v, a, k) => Replace(Text(v), Arg(a, k, 0, "old"), Arg(a, k, 1, "new"), Arg(a, k, 2, "count")),
        ["list"] = (v, _, _) => new List<object?>(JinjaOps.Iterate(v)),
        ["int"] = (v, a, k) => ToInt(v, Arg(a, k, 0, "default") ?? 0L),
        ["float"] = (v, a, k) => ToFloat(v, Arg(a, k, 0, "default") ?? 0.0),
        ["abs"] = (v, _, _) => v switch
        {
            long l => l == long.MinValue ? throw JinjaOps.Error("integer overflow in abs") : (object)Math.Abs(l),
            double d => (object)Math.Abs(d),
            _ => throw JinjaOps.Error($"abs needs a number, not a {JinjaOps.Describe(v)}"),
        },
        ["reverse"] = (v, _, _) => v is string s ? new string([.. s.Reverse()]) : Enumerable.Reverse(JinjaOps.Iterate(v)).ToList(),
        ["map"] = (v, a, k) => k.TryGetValue("attribute", out var attr) && attr is string name && a.Count == 0
            ? JinjaOps.Iterate(v).Select(x => JinjaMembers.Item(x, name)).ToList()
            : throw JinjaOps.Error("only map(attribute='name') is supported by this chat-template renderer"),
        ["selectattr"] = (v, a, k) => SelectAttr(v, a, k, keep: true),
        ["rejectattr"] = (v, a, k) => SelectAttr(v, a, k, keep: false),
    };

    public static bool Exists(string name) => All.ContainsKey(name);

    public static object? Apply(string name, object? value, List<object?> args, Dictionary<string, object?> kwargs) =>
        All[name](value, args, kwargs);

    /// <summary>Positional argument <paramref name="index"/>, else keyword <paramref name="name"/>, else null.</summary>
    private static object? Arg(List<object?> args, Dictionary<string, object?> kwargs, int index, string name) =>
        index < args.Count ? args[index] : kwargs.GetValueOrDefault(name);

    private static string Text(object? v) => JinjaOps.Str(v);

    public static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    public static string Title(string s)
    {
        var chars = s.ToCharArray();
        bool start = true;
        for (int i = 0; i < chars.Length; i++)
        {
            chars[i] = start ? char.ToUpperInvariant(chars[i]) : char.ToLowerInvariant(chars[i]);
            start = !char.IsLetterOrDigit(chars[i]) && chars[i] != '\'';
        }
        return new string(chars);
    }

    public static string Replace(string s, object? old, object? replacement, object? count)
    {
        if (old is not string o || replacement is not string r)
        {
            throw JinjaOps.Error("replace needs two strings");
        }
        long max = count switch
        {
            null => long.MaxValue,
            long l when l >= 0 => l,
            long => long.MaxValue,
            _ => throw JinjaOps.Error($"replace count must be an integer, not a {JinjaOps.Describe(count)}"),
        };
        if (o.Length == 0)
        {
            throw JinjaOps.Error("replace of an empty string is not supported by this chat-template renderer");
        }
        if (max == long.MaxValue)
        {
            return s.Replace(o, r, StringComparison.Ordinal);
        }
        var sb = new System.Text.StringBuilder();
        int at = 0;
        for (long n = 0; n < max; n++)
        {
            int hit = s.IndexOf(o, at, StringComparison.Ordinal);
            if (hit < 0)
            {
                break;
            }
            sb.Append(s, at, hit - at).Append(r);
            at = hit + o.Length;
        }
        return sb.Append(s, at, s.Length - at).ToString();
    }

    private static object? Join(object? v, List<object?> args, Dictionary<string, object?> kwargs)
    {
        string sep = Arg(args, kwargs, 0, "d") switch
        {
            null => "",
            string s => s,
            var other => JinjaOps.Str(other),
        };
        var items = JinjaOps.Iterate(v);
        if (Arg(args, kwargs, 1, "attribute") is string attr)
        {
            items = [.. items.Select(x => JinjaMembers.Item(x, attr))];
        }
        return string.Join(sep, items.Select(JinjaOps.Str));
    }

    private static object? Default(object? v, List<object?> args, Dictionary<string, object?> kwargs)
    {
        object? fallback = Arg(args, kwargs, 0, "default_value") ?? "";
        bool boolean = JinjaOps.Truthy(Arg(args, kwargs, 1, "boolean"));
        return v is JinjaUndefined || (boolean && !JinjaOps.Truthy(v)) ? fallback : v;
    }

    private static object? ToInt(object? v, object? fallback) => v switch
    {
        long or bool => v is bool b ? (b ? 1L : 0L) : v,
        double d when !double.IsNaN(d) && !double.IsInfinity(d) && Math.Abs(d) < 9e18 => (long)Math.Truncate(d),
        string s when long.TryParse(s.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l) => l,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && Math.Abs(d) < 9e18 => (long)Math.Truncate(d),
        _ => fallback,
    };

    private static object? ToFloat(object? v, object? fallback) => v switch
    {
        long l => (double)l,
        double => v,
        bool b => b ? 1.0 : 0.0,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
        _ => fallback,
    };

    private static object? SelectAttr(object? v, List<object?> args, Dictionary<string, object?> kwargs, bool keep)
    {
        if (args.Count == 0 || args[0] is not string attr || kwargs.Count > 0)
        {
            throw JinjaOps.Error("selectattr/rejectattr need an attribute name (and optionally a test and its arguments)");
        }
        string? test = args.Count > 1 ? args[1] as string ?? throw JinjaOps.Error("the test name must be a string") : null;
        if (test != null && !JinjaTests.Exists(test))
        {
            throw JinjaOps.Error($"unknown test '{test}'");
        }
        return JinjaOps.Iterate(v).Where(item =>
        {
            object? value = JinjaMembers.Item(item, attr);
            bool pass = test == null ? JinjaOps.Truthy(value) : JinjaTests.Apply(test, value, args.Skip(2).ToList());
            return pass == keep;
        }).ToList();
    }
}
