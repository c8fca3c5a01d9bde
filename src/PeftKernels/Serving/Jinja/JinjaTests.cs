namespace PeftKernels.Serving.Jinja;

/// <summary>
/// The tests of <c>x is [not] name(args)</c>: defined, undefined, none, string, number, integer, float, boolean,
/// true, false, mapping, iterable, sequence, callable, odd, even, divisibleby, eq/equalto/==, ne/!=, lt/&lt;,
/// le/&lt;=, gt/&gt;, ge/&gt;=, in, sameas, lower, upper. An unknown test is a syntax error when the template is parsed.
/// </summary>
internal static class JinjaTests
{
    private static readonly Dictionary<string, Func<object?, List<object?>, bool>> All = new(StringComparer.Ordinal)
    {
        ["defined"] = (v, _) => v is not JinjaUndefined,
        ["undefined"] = (v, _) => v is JinjaUndefined,
        ["none"] = (v, _) => v is null,
        ["string"] = (v, _) => v is string,
        ["number"] = (v, _) => v is long or double,
        ["integer"] = (v, _) => v is long,
        ["float"] = (v, _) => v is double,
        ["boolean"] = (v, _) => v is bool,
        ["true"] = (v, _) => v is true,
        ["false"] = (v, _) => v is false,
        ["mapping"] = (v, _) => v is Dictionary<string, object?>,
        ["iterable"] = (v, _) => v is string or List<object?> or Dictionary<string, object?> or JinjaUndefined,
        ["sequence"] = (v, _) => v is string or List<object?> or Dictionary<string, object?>,
        ["callable"] = (v, _) => v is JinjaCallable,
        ["odd"] = (v, _) => Integer(v, "odd") % 2 != 0,
        ["even"] = (v, _) => Integer(v, "even") % 2 == 0,
        ["divisibleby"] = (v, a) => Integer(Single(a, "divisibleby"), "divisibleby") is var d && d != 0
            ? Integer(v, "divisibleby") % d == 0 : throw JinjaOps.Error("divisibleby 0"),
        ["eq"] = (v, a) => JinjaOps.Equals(v, Single(a, "eq")),
        ["equalto"] = (v, a) => JinjaOps.Equals(v, Single(a, "equalto")),
        ["=="] = (v, a) => JinjaOps.Equals(v, Single(a, "==")),
        ["ne"] = (v, a) => !JinjaOps.Equals(v, Single(a, "ne")),
        ["!="] = (v, a) => !JinjaOps.Equals(v, Single(a, "!=")),
        ["lt"] = (v, a) => JinjaOps.Compare(v, Single(a, "lt"), "<") < 0,
        ["le"] = (v, a) => JinjaOps.Compare(v, Single(a, "le"), "<=") <= 0,
        ["gt"] = (v, a) => JinjaOps.Compare(v, Single(a, "gt"), ">") > 0,
        ["ge"] = (v, a) => JinjaOps.Compare(v, Single(a, "ge"), ">=") >= 0,
        ["<"] = (v, a) => JinjaOps.Compare(v, Single(a, "<"), "<") < 0,
        ["<="] = (v, a) => JinjaOps.Compare(v, Single(a, "<="), "<=") <= 0,
        [">"] = (v, a) => JinjaOps.Compare(v, Single(a, ">"), ">") > 0,
        [">="] = (v, a) => JinjaOps.Compare(v, Single(a, ">="), ">=") >= 0,
        ["in"] = (v, a) => JinjaOps.Contains(Single(a, "in"), v),
        ["sameas"] = (v, a) => Single(a, "sameas") is var o && (ReferenceEquals(v, o) || (v is bool or null && Equals(v, o))),
        ["lower"] = (v, _) => v is string s && s == s.ToLowerInvariant(),
        ["upper"] = (v, _) => v is string s && s == s.ToUpperInvariant(),
    };

    public static bool Exists(string name) => All.ContainsKey(name);

    public static bool Apply(string name, object? value, List<object?> args) => All[name](value, args);

    private static object? Single(List<object?> args, string test) =>
        args.Count == 1 ? args[0] : throw JinjaOps.Error($"the test '{test}' takes one argument, {args.Count} given");

    private static long Integer(object? v, string test) => v is long l ? l
        : throw JinjaOps.Error($"the test '{test}' needs an integer, not a {JinjaOps.Describe(v)}");
}
