using System.Globalization;

namespace PeftKernels.Serving.Jinja;

/// <summary>
/// Expressions, with Jinja's precedence from loosest to tightest: <c>x if c else y</c>, <c>or</c>, <c>and</c>,
/// <c>not</c>, comparisons (<c>== != &lt; &lt;= &gt; &gt;= in not in</c>, chainable), <c>+ -</c>, <c>~</c>,
/// <c>* / // %</c>, <c>**</c>, unary <c>- +</c>; then a primary (literal, name, list, dict, parentheses) with
/// postfix <c>.attr</c>, <c>[index]</c>, <c>[a:b:c]</c>, <c>(args)</c>, and filters <c>| f(args)</c> and tests
/// <c>is [not] t</c>, which bind tighter than every binary operator (<c>a + b | trim</c> trims only b).
/// </summary>
internal sealed partial class JinjaParser
{
    private static readonly HashSet<string> TestArgumentStoppers = ["else", "or", "and", "if", "in", "is", "not"];

    private JinjaExpr ParseExpression(bool withConditional = true)
    {
        Enter();
        var expr = ParseOr();
        while (withConditional && Peek.IsName("if"))
        {
            var at = SourcePos.Of(Next());
            var test = ParseOr();
            JinjaExpr? otherwise = null;
            if (Peek.IsName("else"))
            {
                Next();
                otherwise = ParseExpression();
            }
            expr = new ConditionalExpr(at, expr, test, otherwise);
        }
        _depth--;
        return expr;
    }

    private JinjaExpr ParseOr()
    {
        var left = ParseAnd();
        while (Peek.IsName("or"))
        {
            var at = SourcePos.Of(Next());
            left = new BinaryExpr(at, "or", left, ParseAnd());
        }
        return left;
    }

    private JinjaExpr ParseAnd()
    {
        var left = ParseNot();
        while (Peek.IsName("and"))
        {
            var at = SourcePos.Of(Next());
            left = new BinaryExpr(at, "and", left, ParseNot());
        }
        return left;
    }

    private JinjaExpr ParseNot()
    {
        if (!Peek.IsName("not"))
        {
            return ParseCompare();
        }
        var at = SourcePos.Of(Next());
        Enter();
        var operand = ParseNot();
        _depth--;
        return new UnaryExpr(at, "not", operand);
    }

    private JinjaExpr ParseCompare()
    {
        var first = ParseBinary(0);
        var rest = new List<(string, JinjaExpr)>();
        while (true)
        {
            var t = Peek;
            string op;
            if (t.Kind == JinjaTokenKind.Operator && t.Value is "==" or "!=" or "<" or "<=" or ">" or ">=")
            {
                op = t.Value;
                Next();
            }
            else if (t.IsName("in"))
            {
                op = "in";
                Next();
            }
            else if (t.IsName("not") && PeekAt(1).IsName("in"))
            {
                op = "not in";
                Next();
                Next();
            }
            else
            {
                break;
            }
            rest.Add((op, ParseBinary(0)));
        }
        return rest.Count == 0 ? first : new CompareExpr(first.At, first, rest);
    }

    /// <summary>The binary operator levels, loosest first: + -, ~, * / // %, **.</summary>
    private static readonly string[][] BinaryLevels = [["+", "-"], ["~"], ["*", "/", "//", "%"], ["**"]];

    private JinjaExpr ParseBinary(int level)
    {
        if (level == BinaryLevels.Length)
        {
            return ParseUnary(withFilter: true);
        }
        var left = ParseBinary(level + 1);
        while (Peek.Kind == JinjaTokenKind.Operator && Array.IndexOf(BinaryLevels[level], Peek.Value) >= 0)
        {
            var op = Next();
            left = new BinaryExpr(SourcePos.Of(op), op.Value, left, ParseBinary(level + 1));
        }
        return left;
    }

    private JinjaExpr ParseUnary(bool withFilter)
    {
        Enter();
        JinjaExpr node;
        if (Peek.IsOperator("-") || Peek.IsOperator("+"))
        {
            var op = Next();
            node = new UnaryExpr(SourcePos.Of(op), op.Value, ParseUnary(withFilter: false));
        }
        else
        {
            node = ParsePrimary();
        }
        node = ParsePostfix(node);
        if (withFilter)
        {
            node = ParseFilters(node);
        }
        _depth--;
        return node;
    }

    private JinjaExpr ParsePrimary()
    {
        var t = Next();
        var at = SourcePos.Of(t);
        switch (t.Kind)
        {
            case JinjaTokenKind.Name:
                return t.Value switch
                {
                    "true" or "True" => new LiteralExpr(at, true),
                    "false" or "False" => new LiteralExpr(at, false),
                    "none" or "None" => new LiteralExpr(at, null),
                    _ => new NameExpr(at, t.Value),
                };
            case JinjaTokenKind.String:
                string s = t.Value;
                while (Peek.Kind == JinjaTokenKind.String)
                {
                    s += Next().Value;
                }
                return new LiteralExpr(at, s);
            case JinjaTokenKind.Integer:
                return new LiteralExpr(at, long.Parse(t.Value, CultureInfo.InvariantCulture));
            case JinjaTokenKind.Float:
                return new LiteralExpr(at, double.Parse(t.Value, CultureInfo.InvariantCulture));
            case JinjaTokenKind.Operator when t.Value == "(":
                if (Peek.IsOperator(")"))
                {
                    Next();
                    return new ListExpr(at, []);
                }
                var inner = ParseExpression();
                if (Peek.IsOperator(","))
                {
                    var items = new List<JinjaExpr> { inner };
                    items.AddRange(ParseItems(")"));
                    return new ListExpr(at, items);
                }
                ExpectOperator(")");
                return inner;
            case JinjaTokenKind.Operator when t.Value == "[":
                return new ListExpr(at, ParseItems("]", leadingComma: false));
            case JinjaTokenKind.Operator when t.Value == "{":
                var pairs = new List<(JinjaExpr, JinjaExpr)>();
                while (!Peek.IsOperator("}"))
                {
                    var key = ParseExpression();
                    ExpectOperator(":");
                    pairs.Add((key, ParseExpression()));
                    if (!Peek.IsOperator(","))
                    {
                        break;
                    }
                    Next();
                }
                ExpectOperator("}");
                return new DictExpr(at, pairs);
            default:
                throw Error(t, $"unexpected {t} in an expression");
        }
    }

    /// <summary>Comma-separated expressions up to <paramref name="close"/> (a trailing comma allowed); with <paramref name="leadingComma"/> the first item was already read and a comma comes first.</summary>
    private List<JinjaExpr> ParseItems(string close, bool leadingComma = true)
    {
        var items = new List<JinjaExpr>();
        if (leadingComma)
        {
            ExpectOperator(",");
        }
        while (!Peek.IsOperator(close))
        {
            items.Add(ParseExpression());
            if (!Peek.IsOperator(","))
            {
                break;
            }
            Next();
        }
        ExpectOperator(close);
        return items;
    }

    private JinjaExpr ParsePostfix(JinjaExpr node)
    {
        while (true)
        {
            var t = Peek;
            if (t.IsOperator("."))
            {
                Next();
                var name = Next();
                if (name.Kind == JinjaTokenKind.Name)
                {
                    node = new AttributeExpr(SourcePos.Of(t), node, name.Value);
                }
                else if (name.Kind == JinjaTokenKind.Integer)
                {
                    node = new IndexExpr(SourcePos.Of(t), node, new LiteralExpr(SourcePos.Of(name), long.Parse(name.Value, CultureInfo.InvariantCulture)));
                }
                else
                {
                    throw Error(name, $"an attribute name expected after '.', found {name}");
                }
            }
            else if (t.IsOperator("["))
            {
                Next();
                node = ParseSubscript(SourcePos.Of(t), node);
            }
            else if (t.IsOperator("("))
            {
                node = new CallExpr(SourcePos.Of(t), node, ParseArguments());
            }
            else
            {
                return node;
            }
        }
    }

    private JinjaExpr ParseSubscript(SourcePos at, JinjaExpr target)
    {
        JinjaExpr? start = Peek.IsOperator(":") ? null : ParseExpression();
        if (!Peek.IsOperator(":"))
        {
            ExpectOperator("]");
            return new IndexExpr(at, target, start!);
        }
        Next();
        JinjaExpr? stop = Peek.IsOperator(":") || Peek.IsOperator("]") ? null : ParseExpression();
        JinjaExpr? step = null;
        if (Peek.IsOperator(":"))
        {
            Next();
            step = Peek.IsOperator("]") ? null : ParseExpression();
        }
        ExpectOperator("]");
        return new SliceExpr(at, target, start, stop, step);
    }

    private JinjaArgs ParseArguments()
    {
        ExpectOperator("(");
        var positional = new List<JinjaExpr>();
        var keyword = new List<(string, JinjaExpr)>();
        while (!Peek.IsOperator(")"))
        {
            if (Peek.Kind == JinjaTokenKind.Name && PeekAt(1).IsOperator("="))
            {
                string name = Next().Value;
                Next();
                keyword.Add((name, ParseExpression()));
            }
            else
            {
                if (keyword.Count > 0)
                {
                    throw Error(Peek, "a positional argument after a keyword argument");
                }
                positional.Add(ParseExpression());
            }
            if (!Peek.IsOperator(","))
            {
                break;
            }
            Next();
        }
        ExpectOperator(")");
        return new JinjaArgs(positional, keyword);
    }

    private JinjaExpr ParseFilters(JinjaExpr node)
    {
        while (true)
        {
            if (Peek.IsOperator("|"))
            {
                var bar = Next();
                var name = Expect(JinjaTokenKind.Name, "a filter name");
                if (!JinjaFilters.Exists(name.Value))
                {
                    throw Error(name, $"unknown filter '{name.Value}'");
                }
                var args = Peek.IsOperator("(") ? ParseArguments() : JinjaArgs.None;
                node = new FilterExpr(SourcePos.Of(bar), node, name.Value, args);
            }
            else if (Peek.IsName("is"))
            {
                var isToken = Next();
                bool negated = false;
                if (Peek.IsName("not"))
                {
                    Next();
                    negated = true;
                }
                var name = Expect(JinjaTokenKind.Name, "a test name");
                if (!JinjaTests.Exists(name.Value))
                {
                    throw Error(name, $"unknown test '{name.Value}'");
                }
                JinjaArgs args = JinjaArgs.None;
                if (Peek.IsOperator("("))
                {
                    args = ParseArguments();
                }
                else if (Peek.Kind is JinjaTokenKind.String or JinjaTokenKind.Integer or JinjaTokenKind.Float
                    || (Peek.Kind == JinjaTokenKind.Name && !TestArgumentStoppers.Contains(Peek.Value))
                    || Peek.IsOperator("[") || Peek.IsOperator("{"))
                {
                    args = new JinjaArgs([ParsePostfix(ParsePrimary())], []);
                }
                node = new TestExpr(SourcePos.Of(isToken), node, name.Value, args, negated);
            }
            else
            {
                return node;
            }
        }
    }
}
