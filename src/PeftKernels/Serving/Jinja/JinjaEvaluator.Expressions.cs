namespace PeftKernels.Serving.Jinja;

/// <summary>Expression evaluation and the global functions: <c>raise_exception</c>, <c>namespace</c>, <c>range</c>, <c>dict</c>.</summary>
internal sealed partial class JinjaEvaluator
{
    private static Dictionary<string, object?> Globals() => new(StringComparer.Ordinal)
    {
        ["raise_exception"] = new JinjaCallable("raise_exception", (args, _) =>
            throw ChatTemplateException.Raised(args.Count > 0 ? JinjaOps.Str(args[0]) : "raise_exception() called")),
        ["namespace"] = new JinjaCallable("namespace", (args, kwargs) =>
        {
            var ns = new JinjaNamespace();
            foreach (var arg in args)
            {
                foreach (var (k, v) in arg as Dictionary<string, object?> ?? throw JinjaOps.Error("namespace() takes keyword arguments or a dict"))
                {
                    ns.Attributes[k] = v;
                }
            }
            foreach (var (k, v) in kwargs)
            {
                ns.Attributes[k] = v;
            }
            return ns;
        }),
        ["dict"] = new JinjaCallable("dict", (args, kwargs) => args.Count == 0
            ? new Dictionary<string, object?>(kwargs, StringComparer.Ordinal)
            : throw JinjaOps.Error("dict() takes keyword arguments only here")),
        ["range"] = new JinjaCallable("range", (args, _) => Range(args)),
    };

    private static List<object?> Range(List<object?> args)
    {
        if (args.Count is < 1 or > 3 || args.Any(a => a is not long))
        {
            throw JinjaOps.Error("range() takes one to three integers");
        }
        long start = args.Count > 1 ? (long)args[0]! : 0, stop = (long)args[args.Count > 1 ? 1 : 0]!, step = args.Count > 2 ? (long)args[2]! : 1;
        if (step == 0)
        {
            throw JinjaOps.Error("range() step must not be zero");
        }
        var result = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (result.Count == JinjaOps.MaxSequence)
            {
                throw JinjaOps.Error($"range() longer than {JinjaOps.MaxSequence} items");
            }
            result.Add(i);
        }
        return result;
    }

    private object? Eval(JinjaExpr expr)
    {
        Step();
        try
        {
            return Nested(() => EvalOne(expr));
        }
        catch (ChatTemplateException e)
        {
            throw Located(e, expr.At);
        }
    }

    private object? EvalOne(JinjaExpr expr)
    {
        switch (expr)
        {
            case LiteralExpr l:
                return l.Value;
            case NameExpr n:
                return Lookup(n.Name);
            case ListExpr l:
                return l.Items.Select(Eval).ToList();
            case DictExpr d:
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, v) in d.Items)
                {
                    dict[Eval(k) as string ?? throw JinjaOps.Error("dict keys must be strings in this chat-template renderer")] = Eval(v);
                }
                return dict;
            case AttributeExpr a:
                return JinjaMembers.Attribute(Eval(a.Target), a.Name);
            case IndexExpr i:
                return JinjaMembers.Item(Eval(i.Target), Eval(i.Index));
            case SliceExpr s:
                return JinjaMembers.Slice(Eval(s.Target), Optional(s.Start), Optional(s.Stop), Optional(s.Step));
            case CallExpr c:
                return Call(c);
            case FilterExpr f:
                var (fa, fk) = Arguments(f.Args);
                return JinjaFilters.Apply(f.Name, Eval(f.Target), fa, fk);
            case TestExpr t:
                var (ta, tk) = Arguments(t.Args);
                if (tk.Count > 0)
                {
                    throw JinjaOps.Error($"the test '{t.Name}' takes no keyword arguments");
                }
                return JinjaTests.Apply(t.Name, Eval(t.Target), ta) != t.Negated;
            case UnaryExpr u:
                return Unary(u.Op, Eval(u.Operand));
            case BinaryExpr b:
                return Binary(b);
            case CompareExpr c:
                return Compare(c);
            case ConditionalExpr c:
                return JinjaOps.Truthy(Eval(c.Test)) ? Eval(c.Then)
                    : c.Otherwise != null ? Eval(c.Otherwise) : new JinjaUndefined("the inline if has no else");
            default:
                throw JinjaOps.Error($"cannot evaluate a {expr.GetType().Name}");
        }
    }

    private object? Optional(JinjaExpr? expr) => expr == null ? null : Eval(expr);

    private (List<object?>, Dictionary<string, object?>) Arguments(JinjaArgs args)
    {
        var positional = args.Positional.Select(Eval).ToList();
        var keyword = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in args.Keyword)
        {
            keyword[name] = Eval(value);
        }
        return (positional, keyword);
    }

    private object? Call(CallExpr c)
    {
        var callee = Eval(c.Callee);
        var (args, kwargs) = Arguments(c.Args);
        return callee switch
        {
            JinjaCallable f => f.Invoke(args, kwargs),
            JinjaUndefined u => throw JinjaOps.Error($"cannot call an undefined value ({u.Hint})"),
            _ => throw JinjaOps.Error($"a {JinjaOps.Describe(callee)} is not callable"),
        };
    }

    private static object? Unary(string op, object? v) => op switch
    {
        "not" => !JinjaOps.Truthy(v),
        "-" => v switch
        {
            long l => l == long.MinValue ? throw JinjaOps.Error("integer overflow in negation") : (object)(-l),
            double d => (object)(-d),
            bool b => (object)(b ? -1L : 0L),
            _ => throw JinjaOps.Error($"bad operand for unary -: a {JinjaOps.Describe(v)}"),
        },
        _ => v is long or double ? v : v is bool b ? (b ? 1L : 0L) : throw JinjaOps.Error($"bad operand for unary +: a {JinjaOps.Describe(v)}"),
    };

    private object? Binary(BinaryExpr b)
    {
        switch (b.Op)
        {
            case "and":
                var left = Eval(b.Left);
                return JinjaOps.Truthy(left) ? Eval(b.Right) : left;
            case "or":
                var first = Eval(b.Left);
                return JinjaOps.Truthy(first) ? first : Eval(b.Right);
            case "~":
                return JinjaOps.Str(Eval(b.Left)) + JinjaOps.Str(Eval(b.Right));
            default:
                return JinjaOps.Arithmetic(b.Op, Eval(b.Left), Eval(b.Right));
        }
    }

    private bool Compare(CompareExpr c)
    {
        var left = Eval(c.First);
        foreach (var (op, operand) in c.Rest)
        {
            var right = Eval(operand);
            bool ok = op switch
            {
                "==" => JinjaOps.Equals(left, right),
                "!=" => !JinjaOps.Equals(left, right),
                "in" => JinjaOps.Contains(right, left),
                "not in" => !JinjaOps.Contains(right, left),
                "<" => JinjaOps.Compare(left, right, op) < 0,
                "<=" => JinjaOps.Compare(left, right, op) <= 0,
                ">" => JinjaOps.Compare(left, right, op) > 0,
                _ => JinjaOps.Compare(left, right, op) >= 0,
            };
            if (!ok)
            {
                return false;
            }
            left = right;
        }
        return true;
    }
}
