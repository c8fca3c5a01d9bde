using System.Text;

namespace PeftKernels.Serving.Jinja;

/// <summary>
/// Renders parsed statements against variables. Scoping follows Jinja: a for loop's body (and its <c>loop</c>
/// variable) has its own scope, so a <c>set</c> inside a loop does not leak out (use a <c>namespace()</c> for that);
/// <c>if</c> has no scope of its own. Runtime errors carry the line and column of the innermost expression.
/// Work is bounded (steps, output length, recursion depth), so no template can hang or exhaust the stack.
/// </summary>
internal sealed partial class JinjaEvaluator
{
    /// <summary>The most statements, expressions and loop iterations one render may evaluate.</summary>
    public const long MaxSteps = 5_000_000;

    /// <summary>The longest output one render may produce, in characters.</summary>
    public const int MaxOutput = 64 << 20;

    private const int MaxEvalDepth = 2 * JinjaParser.MaxDepth;

    private enum Flow
    {
        Normal,
        Break,
        Continue,
    }

    private readonly List<Dictionary<string, object?>> _scopes = [];
    private long _steps;
    private int _depth;

    private JinjaEvaluator(IReadOnlyDictionary<string, object?> variables)
    {
        _scopes.Add(Globals());
        _scopes.Add(new Dictionary<string, object?>(variables, StringComparer.Ordinal));
    }

    public static string Render(IReadOnlyList<JinjaNode> body, IReadOnlyDictionary<string, object?> variables)
    {
        var evaluator = new JinjaEvaluator(variables);
        var output = new StringBuilder();
        evaluator.Exec(body, output);
        return output.ToString();
    }

    private void Step()
    {
        if (++_steps > MaxSteps)
        {
            throw JinjaOps.Error($"the template ran for more than {MaxSteps} steps");
        }
    }

    private static ChatTemplateException Located(ChatTemplateException e, SourcePos at) =>
        e.Line == 0 && e.RaisedMessage == null ? new ChatTemplateException(e.Detail, at.Line, at.Column) : e;

    private Flow Exec(IReadOnlyList<JinjaNode> nodes, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            Step();
            Flow flow;
            try
            {
                flow = ExecOne(node, output);
            }
            catch (ChatTemplateException e)
            {
                throw Located(e, node.At);
            }
            if (output.Length > MaxOutput)
            {
                throw new ChatTemplateException($"the rendered text is longer than {MaxOutput} characters", node.At.Line, node.At.Column);
            }
            if (flow != Flow.Normal)
            {
                return flow;
            }
        }
        return Flow.Normal;
    }

    private Flow ExecOne(JinjaNode node, StringBuilder output)
    {
        switch (node)
        {
            case TextNode t:
                output.Append(t.Text);
                return Flow.Normal;
            case OutputNode o:
                output.Append(JinjaOps.Str(Eval(o.Value)));
                return Flow.Normal;
            case IfNode i:
                foreach (var (test, body) in i.Branches)
                {
                    if (JinjaOps.Truthy(Eval(test)))
                    {
                        return Exec(body, output);
                    }
                }
                return Exec(i.Else, output);
            case ForNode f:
                return ExecFor(f, output);
            case SetNode s:
                Assign(s, Eval(s.Value));
                return Flow.Normal;
            case SetBlockNode b:
                var captured = new StringBuilder();
                Nested(() => Exec(b.Body, captured));
                _scopes[^1][b.Name] = captured.ToString();
                return Flow.Normal;
            case LoopControlNode c:
                return c.IsBreak ? Flow.Break : Flow.Continue;
            case BlockNode block:
                return Exec(block.Body, output);
            default:
                throw JinjaOps.Error($"cannot render a {node.GetType().Name}");
        }
    }

    private T Nested<T>(Func<T> body)
    {
        if (++_depth > MaxEvalDepth)
        {
            throw JinjaOps.Error($"the template nests deeper than {MaxEvalDepth} levels");
        }
        try
        {
            return body();
        }
        finally
        {
            _depth--;
        }
    }

    private void Assign(SetNode s, object? value)
    {
        if (s.Attribute == null)
        {
            _scopes[^1][s.Name] = value;
            return;
        }
        if (Lookup(s.Name) is not JinjaNamespace ns)
        {
            throw JinjaOps.Error($"cannot assign attribute '{s.Attribute}' of '{s.Name}': only a namespace() object's attributes can be set");
        }
        ns.Attributes[s.Attribute] = value;
    }

    private Flow ExecFor(ForNode f, StringBuilder output)
    {
        var source = JinjaOps.Iterate(Eval(f.Iterable));
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
        _scopes.Add(scope);
        try
        {
            var items = source;
            if (f.Filter != null)
            {
                items = [];
                foreach (var item in source)
                {
                    Step();
                    Bind(f, scope, item);
                    if (JinjaOps.Truthy(Eval(f.Filter)))
                    {
                        items.Add(item);
                    }
                }
                scope.Clear();
            }
            var loop = new JinjaLoop(items);
            for (int i = 0; i < items.Count; i++)
            {
                Step();
                loop.Index0 = i;
                scope["loop"] = loop;
                Bind(f, scope, items[i]);
                var flow = Nested(() => Exec(f.Body, output));
                if (flow == Flow.Break)
                {
                    break;
                }
            }
            if (items.Count == 0)
            {
                _scopes.RemoveAt(_scopes.Count - 1);
                scope = null;
                return Nested(() => Exec(f.Else, output));
            }
            return Flow.Normal;
        }
        finally
        {
            if (scope != null)
            {
                _scopes.RemoveAt(_scopes.Count - 1);
            }
        }
    }

    private static void Bind(ForNode f, Dictionary<string, object?> scope, object? item)
    {
        if (f.Targets.Count == 1)
        {
            scope[f.Targets[0]] = item;
            return;
        }
        if (item is not List<object?> parts || parts.Count != f.Targets.Count)
        {
            throw JinjaOps.Error($"cannot unpack {JinjaOps.Repr(item)} into {f.Targets.Count} names");
        }
        for (int i = 0; i < parts.Count; i++)
        {
            scope[f.Targets[i]] = parts[i];
        }
    }

    private object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
        {
            if (_scopes[i].TryGetValue(name, out var v))
            {
                return v;
            }
        }
        return new JinjaUndefined($"'{name}' is undefined");
    }
}
