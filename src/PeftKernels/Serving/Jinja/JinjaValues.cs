namespace PeftKernels.Serving.Jinja;

// Values of the template language are plain .NET objects: null (none), bool, long (int), double (float),
// string, List<object?> (list and tuple), Dictionary<string, object?> (dict, insertion-ordered), and the
// types below.

/// <summary>
/// Jinja's default <c>Undefined</c>: what an unknown name, a missing key or attribute, or a failed subscript gives.
/// It is falsy, renders as the empty string, iterates as empty and has length 0; as the brief for this renderer
/// asks, an attribute or item of it is again undefined (Jinja itself would raise there). Arithmetic on it, or
/// calling it, raises a <see cref="ChatTemplateException"/> naming what was undefined.
/// </summary>
internal sealed class JinjaUndefined(string hint)
{
    /// <summary>Why the value is undefined, as Jinja words it ("'x' is undefined", "'dict object' has no attribute 'y'").</summary>
    public string Hint { get; } = hint;

    public override string ToString() => "";
}

/// <summary>The object <c>namespace(...)</c> returns: the one object whose attributes <c>{% set ns.x = ... %}</c> may assign, so a loop can carry state out.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A function value: a global (<c>raise_exception</c>, <c>namespace</c>, <c>range</c>) or a method bound to its receiver (<c>content.strip</c>).</summary>
internal sealed class JinjaCallable(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
{
    public string Name { get; } = name;

    public object? Invoke(List<object?> args, Dictionary<string, object?> kwargs) => invoke(args, kwargs);
}

/// <summary>The <c>loop</c> variable inside a for loop.</summary>
internal sealed class JinjaLoop(IReadOnlyList<object?> items)
{
    public int Index0 { get; set; }

    public object? Attribute(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new JinjaUndefined("there is no previous item"),
        "nextitem" => Index0 < items.Count - 1 ? items[Index0 + 1] : new JinjaUndefined("there is no next item"),
        "cycle" => new JinjaCallable("loop.cycle", (args, _) =>
            args.Count == 0 ? throw new ChatTemplateException("loop.cycle() needs at least one argument") : args[Index0 % args.Count]),
        _ => new JinjaUndefined($"'loop' has no attribute '{name}'"),
    };
}
