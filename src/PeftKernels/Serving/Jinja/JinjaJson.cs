using System.Globalization;
using System.Text;

namespace PeftKernels.Serving.Jinja;

/// <summary>
/// The <c>tojson</c> filter as Hugging Face overrides it: Python's <c>json.dumps(x, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)</c> — separators <c>", "</c> and <c>": "</c> (<c>","</c> at line ends when
/// indented), non-ASCII characters kept, no HTML escaping.
/// </summary>
internal static class JinjaJson
{
    public static string Serialize(object? value, object? indent, bool sortKeys)
    {
        string? pad = indent switch
        {
            null => null,
            long n when n >= 0 && n <= 64 => new string(' ', (int)n),
            string s => s,
            _ => throw JinjaOps.Error($"tojson indent must be a small integer or a string, not {JinjaOps.Repr(indent)}"),
        };
        var sb = new StringBuilder();
        Write(sb, value, pad, sortKeys, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, string? pad, bool sortKeys, int depth)
    {
        if (depth > JinjaParser.MaxDepth)
        {
            throw JinjaOps.Error("a value nests too deeply for tojson");
        }
        switch (v)
        {
            case null:
                sb.Append("null");
                break;
            case bool b:
                sb.Append(b ? "true" : "false");
                break;
            case long l:
                sb.Append(l.ToString(CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : JinjaOps.FloatRepr(d));
                break;
            case string s:
                WriteString(sb, s);
                break;
            case List<object?> list:
                WriteItems(sb, '[', ']', list.Count, pad, depth, i => Write(sb, list[i], pad, sortKeys, depth + 1));
                break;
            case Dictionary<string, object?> dict:
                var keys = sortKeys ? dict.Keys.Order(StringComparer.Ordinal).ToList() : [.. dict.Keys];
                WriteItems(sb, '{', '}', keys.Count, pad, depth, i =>
                {
                    WriteString(sb, keys[i]);
                    sb.Append(": ");
                    Write(sb, dict[keys[i]], pad, sortKeys, depth + 1);
                });
                break;
            case JinjaNamespace ns:
                Write(sb, ns.Attributes, pad, sortKeys, depth);
                break;
            default:
                throw JinjaOps.Error($"a {JinjaOps.Describe(v)} is not JSON serializable");
        }
    }

    private static void WriteItems(StringBuilder sb, char open, char close, int count, string? pad, int depth, Action<int> item)
    {
        sb.Append(open);
        if (count == 0)
        {
            sb.Append(close);
            return;
        }
        for (int i = 0; i < count; i++)
        {
            if (pad != null)
            {
                sb.Append(i > 0 ? "," : "").Append('\n').Insert(sb.Length, pad, depth + 1);
            }
            else if (i > 0)
            {
                sb.Append(", ");
            }
            item(i);
        }
        if (pad != null)
        {
            sb.Append('\n').Insert(sb.Length, pad, depth);
        }
        sb.Append(close);
    }

    private static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20)
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }
                    break;
            }
        }
        sb.Append('"');
    }
}
