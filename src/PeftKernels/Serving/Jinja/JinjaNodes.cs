namespace PeftKernels.Serving.Jinja;

/// <summary>Where a node starts in the template text (1-based), for runtime error messages.</summary>
internal readonly record struct SourcePos(int Line, int Column)
{
    public static SourcePos Of(JinjaToken token) => new(token.Line, token.Column);
}

// ---- Expressions ----

/// <summary>An expression of the template language.</summary>
internal abstract record JinjaExpr(SourcePos At);

/// <summary>A constant: string, integer (long), float (double), bool or none (null).</summary>
internal sealed record LiteralExpr(SourcePos At, object? Value) : JinjaExpr(At);

/// <summary>A variable reference.</summary>
internal sealed record NameExpr(SourcePos At, string Name) : JinjaExpr(At);

/// <summary>A list (or tuple) display <c>[a, b]</c> / <c>(a, b)</c>.</summary>
internal sealed record ListExpr(SourcePos At, IReadOnlyList<JinjaExpr> Items) : JinjaExpr(At);

/// <summary>A dict display <c>{'k': v}</c>.</summary>
internal sealed record DictExpr(SourcePos At, IReadOnlyList<(JinjaExpr Key, JinjaExpr Value)> Items) : JinjaExpr(At);

/// <summary><c>target.name</c>: an attribute, else the item of that name.</summary>
internal sealed record AttributeExpr(SourcePos At, JinjaExpr Target, string Name) : JinjaExpr(At);

/// <summary><c>target[index]</c>: the item, else the attribute of that name.</summary>
internal sealed record IndexExpr(SourcePos At, JinjaExpr Target, JinjaExpr Index) : JinjaExpr(At);

/// <summary><c>target[start:stop:step]</c> on a list or string.</summary>
internal sealed record SliceExpr(SourcePos At, JinjaExpr Target, JinjaExpr? Start, JinjaExpr? Stop, JinjaExpr? Step) : JinjaExpr(At);

/// <summary>The arguments of a call, filter or test: positional, then keyword.</summary>
internal sealed record JinjaArgs(IReadOnlyList<JinjaExpr> Positional, IReadOnlyList<(string Name, JinjaExpr Value)> Keyword)
{
    public static readonly JinjaArgs None = new([], []);
}

/// <summary><c>callee(args)</c>: a global function or a method of a value.</summary>
internal sealed record CallExpr(SourcePos At, JinjaExpr Callee, JinjaArgs Args) : JinjaExpr(At);

/// <summary><c>target | name(args)</c>.</summary>
internal sealed record FilterExpr(SourcePos At, JinjaExpr Target, string Name, JinjaArgs Args) : JinjaExpr(At);

/// <summary><c>target is [not] name(args)</c>.</summary>
internal sealed record TestExpr(SourcePos At, JinjaExpr Target, string Name, JinjaArgs Args, bool Negated) : JinjaExpr(At);

/// <summary><c>not x</c>, <c>-x</c>, <c>+x</c>.</summary>
internal sealed record UnaryExpr(SourcePos At, string Op, JinjaExpr Operand) : JinjaExpr(At);

/// <summary>Arithmetic (<c>+ - * / // % **</c>), concatenation (<c>~</c>) and the short-circuit <c>and</c>/<c>or</c>.</summary>
internal sealed record BinaryExpr(SourcePos At, string Op, JinjaExpr Left, JinjaExpr Right) : JinjaExpr(At);

/// <summary>A comparison chain <c>a &lt; b == c</c>, with <c>in</c> and <c>not in</c> as operators.</summary>
internal sealed record CompareExpr(SourcePos At, JinjaExpr First, IReadOnlyList<(string Op, JinjaExpr Operand)> Rest) : JinjaExpr(At);

/// <summary><c>then if test else otherwise</c>; without <c>else</c> the result is undefined when the test fails.</summary>
internal sealed record ConditionalExpr(SourcePos At, JinjaExpr Then, JinjaExpr Test, JinjaExpr? Otherwise) : JinjaExpr(At);

// ---- Statements ----

/// <summary>A statement of the template: text, output or a tag.</summary>
internal abstract record JinjaNode(SourcePos At);

/// <summary>Literal template text.</summary>
internal sealed record TextNode(SourcePos At, string Text) : JinjaNode(At);

/// <summary><c>{{ expr }}</c>.</summary>
internal sealed record OutputNode(SourcePos At, JinjaExpr Value) : JinjaNode(At);

/// <summary><c>{% if %}...{% elif %}...{% else %}...{% endif %}</c>.</summary>
internal sealed record IfNode(SourcePos At, IReadOnlyList<(JinjaExpr Test, IReadOnlyList<JinjaNode> Body)> Branches, IReadOnlyList<JinjaNode> Else) : JinjaNode(At);

/// <summary><c>{% for a[, b] in iterable [if filter] %}...{% else %}...{% endfor %}</c>.</summary>
internal sealed record ForNode(SourcePos At, IReadOnlyList<string> Targets, JinjaExpr Iterable, JinjaExpr? Filter, IReadOnlyList<JinjaNode> Body, IReadOnlyList<JinjaNode> Else) : JinjaNode(At);

/// <summary><c>{% set name = value %}</c> or <c>{% set ns.attr = value %}</c> (Attribute non-null).</summary>
internal sealed record SetNode(SourcePos At, string Name, string? Attribute, JinjaExpr Value) : JinjaNode(At);

/// <summary><c>{% set name %}...{% endset %}</c>: the rendered body assigned to a name.</summary>
internal sealed record SetBlockNode(SourcePos At, string Name, IReadOnlyList<JinjaNode> Body) : JinjaNode(At);

/// <summary><c>{% break %}</c> or <c>{% continue %}</c> (Jinja's loopcontrols extension, which Hugging Face enables).</summary>
internal sealed record LoopControlNode(SourcePos At, bool IsBreak) : JinjaNode(At);

/// <summary>A body rendered as is: Hugging Face's <c>{% generation %}...{% endgeneration %}</c> marker.</summary>
internal sealed record BlockNode(SourcePos At, IReadOnlyList<JinjaNode> Body) : JinjaNode(At);
