using System.Globalization;
using System.Text;

namespace PeftKernels.Serving.Jinja;

/// <summary>Python semantics of the template values: truth, str() and repr(), equality and ordering, arithmetic, iteration, length.</summary>
internal static class JinjaOps
{
    /// <summary>The longest string or list that <c>*</c> or <c>range</c> may build (a guard against runaway templates).</summary>
    public const int MaxSequence = 1 << 20;

    public static ChatTemplateException Error(string message) => new(message);

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        JinjaUndefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        JinjaNamespace => "Namespace",
        JinjaLoop => "LoopContext",
        JinjaCallable => "function",
        _ => v.GetType().Name,
    };

    public static bool Truthy(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str(): how a value is rendered by <c>{{ }}</c>, <c>~</c> and <c>| string</c>.</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        JinjaUndefined => "",
        List<object?> or Dictionary<string, object?> => Repr(v),
        _ => Scalar(v),
    };

    private static string Scalar(object? v) => v switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        JinjaNamespace ns => "<Namespace " + Repr(ns.Attributes) + ">",
        JinjaCallable f => $"<function {f.Name}>",
        JinjaLoop => "<LoopContext>",
        _ => v.ToString() ?? "",
    };

    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d))
        {
            return "nan";
        }
        if (double.IsInfinity(d))
        {
            return d > 0 ? "inf" : "-inf";
        }
        string r = d.ToString("R", CultureInfo.InvariantCulture).Replace("E+", "e+", StringComparison.Ordinal).Replace("E-", "e-", StringComparison.Ordinal);
        return r.Contains('.', StringComparison.Ordinal) || r.Contains('e', StringComparison.Ordinal) ? r : r + ".0";
    }

    /// <summary>Python's repr(): strings quoted, lists and dicts shown as Python shows them.</summary>
    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        Repr(sb, v, 0);
        return sb.ToString();
    }

    private static void Repr(StringBuilder sb, object? v, int depth)
    {
        if (depth > JinjaParser.MaxDepth)
        {
            throw Error("a value nests too deeply to render");
        }
        switch (v)
        {
            case string s:
                char q = s.Contains('\'', StringComparison.Ordinal) && !s.Contains('"', StringComparison.Ordinal) ? '"' : '\'';
                sb.Append(q);
                foreach (char c in s)
                {
                    sb.Append(c switch
                    {
                        '\\' => "\\\\",
                        '\n' => "\\n",
                        '\r' => "\\r",
                        '\t' => "\\t",
                        _ when c == q => "\\" + c,
                        _ => c.ToString(),
                    });
                }
                sb.Append(q);
                break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    sb.Append(i > 0 ? ", " : "");
                    Repr(sb, list[i], depth + 1);
                }
                sb.Append(']');
                break;
            case Dictionary<string, object?> dict:
                sb.Append('{');
                bool first = true;
                foreach (var (key, value) in dict)
                {
                    sb.Append(first ? "" : ", ");
                    first = false;
                    Repr(sb, key, depth + 1);
                    sb.Append(": ");
                    Repr(sb, value, depth + 1);
                }
                sb.Append('}');
                break;
            case JinjaUndefined:
                sb.Append("Undefined");
                break;
            default:
                sb.Append(Scalar(v));
                break;
        }
    }

    private static bool IsNumber(object? v) => v is long or double or bool;

    private static double AsDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidCastException(),
    };

    private static bool IsInteger(object? v, out long value)
    {
        (bool ok, value) = v switch
        {
            long l => (true, l),
            bool b => (true, b ? 1L : 0L),
            _ => (false, 0L),
        };
        return ok;
    }

    public static new bool Equals(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return IsInteger(a, out long x) && IsInteger(b, out long y) ? x == y : AsDouble(a) == AsDouble(b);
        }
        return (a, b) switch
        {
            (null, null) => true,
            (JinjaUndefined, JinjaUndefined) => true,
            (string s, string t) => string.Equals(s, t, StringComparison.Ordinal),
            (List<object?> l, List<object?> m) => l.Count == m.Count && l.Zip(m).All(p => Equals(p.First, p.Second)),
            (Dictionary<string, object?> d, Dictionary<string, object?> e) =>
                d.Count == e.Count && d.All(kv => e.TryGetValue(kv.Key, out var o) && Equals(kv.Value, o)),
            _ => ReferenceEquals(a, b),
        };
    }

    /// <summary>Python ordering of two values: numbers, strings (by code unit) or lists of those.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return IsInteger(a, out long x) && IsInteger(b, out long y) ? x.CompareTo(y) : AsDouble(a).CompareTo(AsDouble(b));
        }
        if (a is string s && b is string t)
        {
            return string.CompareOrdinal(s, t);
        }
        if (a is List<object?> l && b is List<object?> m)
        {
            for (int i = 0; i < Math.Min(l.Count, m.Count); i++)
            {
                if (!Equals(l[i], m[i]))
                {
                    return Compare(l[i], m[i], op);
                }
            }
            return l.Count.CompareTo(m.Count);
        }
        throw Error($"'{op}' is not supported between a {Describe(a)} and a {Describe(b)}");
    }

    /// <summary>A value's type for an error message; for an undefined value, why it is undefined.</summary>
    public static string Describe(object? v) => v is JinjaUndefined u ? $"undefined value ({u.Hint})" : $"'{TypeName(v)}'";

    public static bool Contains(object? container, object? item) => container switch
    {
        string s when item is string t => s.Contains(t, StringComparison.Ordinal),
        string => throw Error($"'in <string>' needs a string on the left, not a {Describe(item)}"),
        List<object?> l => l.Any(x => Equals(x, item)),
        Dictionary<string, object?> d => item is string k && d.ContainsKey(k),
        JinjaUndefined => false,
        _ => throw Error($"'in' is not supported on a {Describe(container)}"),
    };

    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        Dictionary<string, object?> d => [.. d.Keys],
        string s => [.. s.Select(c => (object?)c.ToString())],
        JinjaUndefined => [],
        _ => throw Error($"a {Describe(v)} is not iterable"),
    };

    public static long Length(object? v) => v switch
    {
        string s => s.Length,
        List<object?> l => l.Count,
        Dictionary<string, object?> d => d.Count,
        JinjaNamespace ns => ns.Attributes.Count,
        JinjaUndefined => 0,
        _ => throw Error($"a {Describe(v)} has no length"),
    };

    /// <summary>The binary arithmetic operators <c>+ - * / // % **</c>.</summary>
    public static object? Arithmetic(string op, object? a, object? b)
    {
        if (a is JinjaUndefined || b is JinjaUndefined)
        {
            throw Error($"'{op}' on an {Describe(a is JinjaUndefined ? a : b)}");
        }
        if (IsInteger(a, out long x) && IsInteger(b, out long y))
        {
            return IntegerArithmetic(op, x, y);
        }
        if (IsNumber(a) && IsNumber(b))
        {
            double p = AsDouble(a), q = AsDouble(b);
            if (q == 0 && op is "/" or "//" or "%")
            {
                throw Error("division by zero");
            }
            return op switch
            {
                "+" => p + q,
                "-" => p - q,
                "*" => p * q,
                "/" => p / q,
                "//" => Math.Floor(p / q),
                "%" => p - (q * Math.Floor(p / q)),
                _ => Math.Pow(p, q),
            };
        }
        return (op, a, b) switch
        {
            ("+", string s, string t) => s + t,
            ("+", List<object?> l, List<object?> m) => l.Concat(m).ToList(),
            ("*", string s, _) when IsInteger(b, out long n) => Repeat(s, n),
            ("*", _, string s) when IsInteger(a, out long n) => Repeat(s, n),
            ("*", List<object?> l, _) when IsInteger(b, out long n) => RepeatList(l, n),
            ("%", string, _) => throw Error("string formatting with '%' is not supported by this chat-template renderer"),
            _ => throw Error($"unsupported operand types for {op}: {Describe(a)} and {Describe(b)}"),
        };
    }

    private static object IntegerArithmetic(string op, long x, long y)
    {
        try
        {
            checked
            {
                switch (op)
                {
                    case "+": return x + y;
                    case "-": return x - y;
                    case "*": return x * y;
                    case "/": return y == 0 ? throw Error("division by zero") : (double)x / y;
                    case "//":
                    case "%":
                        if (y == 0)
                        {
                            throw Error("division by zero");
                        }
                        long quotient = x / y, remainder = x % y;
                        if (remainder != 0 && ((remainder < 0) != (y < 0)))
                        {
                            quotient--;
                            remainder += y;
                        }
                        return op == "//" ? quotient : remainder;
                    default:
                        if (y < 0)
                        {
                            return Math.Pow(x, y);
                        }
                        if (x is 0 or 1 or -1)
                        {
                            return y == 0 ? 1L : x == -1 && y % 2 == 1 ? -1L : x;
                        }
                        long result = 1;
                        for (long i = 0; i < y; i++)
                        {
                            result *= x;
                        }
                        return result;
                }
            }
        }
        catch (OverflowException)
        {
            throw Error($"integer overflow in {x} {op} {y}");
        }
    }

    private static string Repeat(string s, long n)
    {
        if (n <= 0)
        {
            return "";
        }
        if (n * (long)s.Length > MaxSequence)
        {
            throw Error($"'*' would build a string longer than {MaxSequence} characters");
        }
        return new StringBuilder().Insert(0, s, (int)n).ToString();
    }

    private static List<object?> RepeatList(List<object?> l, long n)
    {
        if (n <= 0)
        {
            return [];
        }
        if (n * (long)l.Count > MaxSequence)
        {
            throw Error($"'*' would build a list longer than {MaxSequence} items");
        }
        var result = new List<object?>();
        for (long i = 0; i < n; i++)
        {
            result.AddRange(l);
        }
        return result;
    }
}
