namespace PeftKernels.Serving.Jinja;

/// <summary>
/// Attribute access (<c>x.name</c>: attribute first, then item, as Jinja's getattr) and subscripts (<c>x[key]</c>:
/// item first, then attribute), slices, and the methods the chat templates call: on strings <c>strip lstrip rstrip
/// startswith endswith split upper lower title capitalize replace</c>, on dicts <c>items keys values get</c>.
/// A missing attribute, key or index gives an undefined value, never an error.
/// </summary>
internal static class JinjaMembers
{
    public static object? Attribute(object? target, string name)
    {
        switch (target)
        {
            case JinjaUndefined u:
                return new JinjaUndefined(u.Hint);
            case JinjaLoop loop:
                return loop.Attribute(name);
            case JinjaNamespace ns:
                return ns.Attributes.TryGetValue(name, out var v) ? v : Missing(target, name);
            case string s when StringMethod(s, name) is { } method:
                return method;
            case Dictionary<string, object?> d:
                return DictMethod(d, name) ?? (d.TryGetValue(name, out var item) ? item : Missing(target, name));
            default:
                return Missing(target, name);
        }
    }

    public static object? Item(object? target, object? key)
    {
        switch (target, key)
        {
            case (JinjaUndefined u, _):
                return new JinjaUndefined(u.Hint);
            case (Dictionary<string, object?> d, string k) when d.TryGetValue(k, out var v):
                return v;
            case (List<object?> l, long i):
                long li = i < 0 ? i + l.Count : i;
                return li >= 0 && li < l.Count ? l[(int)li] : new JinjaUndefined($"list index {i} out of range");
            case (string s, long i):
                long si = i < 0 ? i + s.Length : i;
                return si >= 0 && si < s.Length ? s[(int)si].ToString() : new JinjaUndefined($"string index {i} out of range");
            case (_, string name):
                return Attribute(target, name);
            default:
                return new JinjaUndefined($"{JinjaOps.Describe(target)} has no item {JinjaOps.Repr(key)}");
        }
    }

    private static JinjaUndefined Missing(object? target, string name) =>
        new($"'{JinjaOps.TypeName(target)} object' has no attribute '{name}'");

    /// <summary>Python slicing <c>target[start:stop:step]</c> of a list or string; undefined values slice to undefined.</summary>
    public static object? Slice(object? target, object? start, object? stop, object? step)
    {
        if (target is JinjaUndefined)
        {
            return target;
        }
        int count = target switch
        {
            List<object?> l => l.Count,
            string s => s.Length,
            _ => throw JinjaOps.Error($"a {JinjaOps.Describe(target)} cannot be sliced"),
        };
        long st = Bound(step, 1, "step");
        if (st == 0)
        {
            throw JinjaOps.Error("slice step cannot be zero");
        }
        long lo = Bound(start, st > 0 ? 0 : count - 1, "start"), hi = Bound(stop, st > 0 ? count : -count - 1, "stop");
        lo = Clamp(lo, count, st);
        hi = Clamp(hi, count, st);
        var indices = new List<int>();
        for (long i = lo; st > 0 ? i < hi : i > hi; i += st)
        {
            indices.Add((int)i);
        }
        return target is string str
            ? string.Concat(indices.Select(i => str[i]))
            : indices.Select(i => ((List<object?>)target)[i]).ToList();
    }

    private static long Bound(object? v, long fallback, string what) => v switch
    {
        null or JinjaUndefined => fallback,
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw JinjaOps.Error($"slice {what} must be an integer, not a {JinjaOps.Describe(v)}"),
    };

    private static long Clamp(long i, int count, long step)
    {
        if (i < 0)
        {
            i += count;
        }
        return step > 0 ? Math.Clamp(i, 0, count) : Math.Clamp(i, -1, count - 1);
    }

    private static JinjaCallable? DictMethod(Dictionary<string, object?> d, string name) => name switch
    {
        "items" => new("dict.items", (a, k) => Arity(name, a, k, 0, 0, () => Items(d))),
        "keys" => new("dict.keys", (a, k) => Arity(name, a, k, 0, 0, () => d.Keys.Select(x => (object?)x).ToList())),
        "values" => new("dict.values", (a, k) => Arity(name, a, k, 0, 0, () => d.Values.ToList())),
        "get" => new("dict.get", (a, k) => Arity(name, a, k, 1, 2, () =>
            a[0] is string key && d.TryGetValue(key, out var v) ? v : a.Count > 1 ? a[1] : null)),
        _ => null,
    };

    public static List<object?> Items(Dictionary<string, object?> d) => [.. d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value })];

    private static JinjaCallable? StringMethod(string s, string name) => name switch
    {
        "strip" => new("str.strip", (a, k) => Arity(name, a, k, 0, 1, () => s.Trim(Chars(a)))),
        "lstrip" => new("str.lstrip", (a, k) => Arity(name, a, k, 0, 1, () => s.TrimStart(Chars(a)))),
        "rstrip" => new("str.rstrip", (a, k) => Arity(name, a, k, 0, 1, () => s.TrimEnd(Chars(a)))),
        "upper" => new("str.upper", (a, k) => Arity(name, a, k, 0, 0, () => s.ToUpperInvariant())),
        "lower" => new("str.lower", (a, k) => Arity(name, a, k, 0, 0, () => s.ToLowerInvariant())),
        "title" => new("str.title", (a, k) => Arity(name, a, k, 0, 0, () => JinjaFilters.Title(s))),
        "capitalize" => new("str.capitalize", (a, k) => Arity(name, a, k, 0, 0, () => JinjaFilters.Capitalize(s))),
        "startswith" => new("str.startswith", (a, k) => Arity(name, a, k, 1, 1, () => Affix(a[0], p => s.StartsWith(p, StringComparison.Ordinal)))),
        "endswith" => new("str.endswith", (a, k) => Arity(name, a, k, 1, 1, () => Affix(a[0], p => s.EndsWith(p, StringComparison.Ordinal)))),
        "replace" => new("str.replace", (a, k) => Arity(name, a, k, 2, 3, () => JinjaFilters.Replace(s, a[0], a[1], a.Count > 2 ? a[2] : null))),
        "split" => new("str.split", (a, k) => Arity(name, a, k, 0, 2, () => Split(s, a.Count > 0 ? a[0] : null, a.Count > 1 ? a[1] : null))),
        _ => null,
    };

    private static object? Arity(string name, List<object?> args, Dictionary<string, object?> kwargs, int min, int max, Func<object?> body)
    {
        if (kwargs.Count > 0)
        {
            throw JinjaOps.Error($"{name}() takes no keyword arguments here");
        }
        if (args.Count < min || args.Count > max)
        {
            throw JinjaOps.Error($"{name}() takes {(min == max ? $"{min}" : $"{min} to {max}")} arguments, {args.Count} given");
        }
        return body();
    }

    private static char[]? Chars(List<object?> args) => args.Count == 0 || args[0] == null ? null
        : args[0] is string s ? s.ToCharArray()
        : throw JinjaOps.Error($"strip characters must be a string, not a {JinjaOps.Describe(args[0])}");

    private static bool Affix(object? arg, Func<string, bool> test) => arg switch
    {
        string p => test(p),
        List<object?> l => l.Any(x => x is string p ? test(p) : throw JinjaOps.Error("startswith/endswith need strings")),
        _ => throw JinjaOps.Error($"startswith/endswith need a string, not a {JinjaOps.Describe(arg)}"),
    };

    private static List<object?> Split(string s, object? sep, object? maxSplit)
    {
        long max = maxSplit switch
        {
            null => -1,
            long l => l,
            _ => throw JinjaOps.Error($"split() maxsplit must be an integer, not a {JinjaOps.Describe(maxSplit)}"),
        };
        int count = max < 0 ? int.MaxValue : (int)Math.Min(max + 1, int.MaxValue);
        if (sep == null)
        {
            // Python's split() without a separator: runs of whitespace, no empty strings.
            var parts = new List<object?>();
            string rest = s.TrimStart();
            while (rest.Length > 0)
            {
                if (parts.Count == count - 1)
                {
                    parts.Add(rest.TrimEnd());
                    break;
                }
                int end = 0;
                while (end < rest.Length && !char.IsWhiteSpace(rest[end]))
                {
                    end++;
                }
                parts.Add(rest[..end]);
                rest = rest[end..].TrimStart();
            }
            return parts;
        }
        if (sep is not string separator || separator.Length == 0)
        {
            throw JinjaOps.Error("split() needs a non-empty string separator");
        }
        return [.. s.Split(separator, count).Select(p => (object?)p)];
    }
}
