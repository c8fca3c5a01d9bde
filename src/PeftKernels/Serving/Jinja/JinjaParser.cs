namespace PeftKernels.Serving.Jinja;

/// <summary>
/// Parses template tokens into statements: text, <c>{{ expr }}</c>, <c>if/elif/else</c>, <c>for ... in ... [if ...]</c>
/// with <c>else</c>, <c>set</c> (a name, a namespace attribute, or a block), <c>break</c>/<c>continue</c> and
/// Hugging Face's <c>generation</c> block. Every other tag (macro, call, filter, include, extends, block, raw, with,
/// do, ...) is refused with a <see cref="ChatTemplateException"/> naming the tag and its line and column.
/// </summary>
internal sealed partial class JinjaParser
{
    /// <summary>The deepest nesting of tags and expressions accepted (a guard against stack exhaustion).</summary>
    public const int MaxDepth = 200;

    private static readonly HashSet<string> Unsupported =
        ["macro", "endmacro", "call", "endcall", "filter", "endfilter", "include", "import", "from", "extends", "block",
         "endblock", "raw", "endraw", "with", "endwith", "do", "autoescape", "endautoescape", "trans", "pluralize"];

    private readonly List<JinjaToken> _tokens;
    private int _i;
    private int _depth;
    private int _loops;

    private JinjaParser(List<JinjaToken> tokens) => _tokens = tokens;

    /// <summary>The statements of <paramref name="source"/>; a <see cref="ChatTemplateException"/> with line and column for any syntax error.</summary>
    public static IReadOnlyList<JinjaNode> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        var body = parser.ParseBody([], out _, null);
        return body;
    }

    private JinjaToken Peek => _tokens[_i];

    private JinjaToken PeekAt(int ahead) => _tokens[Math.Min(_i + ahead, _tokens.Count - 1)];

    private JinjaToken Next()
    {
        var t = _tokens[_i];
        if (_i < _tokens.Count - 1)
        {
            _i++;
        }
        return t;
    }

    private static ChatTemplateException Error(JinjaToken at, string message) => new(message, at.Line, at.Column);

    private void Enter()
    {
        if (++_depth > MaxDepth)
        {
            throw Error(Peek, $"the template nests deeper than {MaxDepth} levels");
        }
    }

    private JinjaToken Expect(JinjaTokenKind kind, string what)
    {
        if (Peek.Kind != kind)
        {
            throw Error(Peek, $"{what} expected, found {Peek}");
        }
        return Next();
    }

    private void ExpectOperator(string op)
    {
        if (!Peek.IsOperator(op))
        {
            throw Error(Peek, $"'{op}' expected, found {Peek}");
        }
        Next();
    }

    private void ExpectBlockEnd() => Expect(JinjaTokenKind.BlockEnd, "'%}'");

    private string ExpectName() => Expect(JinjaTokenKind.Name, "a name").Value;

    /// <summary>Statements up to a block tag named in <paramref name="ends"/> (consumed up to its name; <paramref name="end"/> is that name) or the end of the template.</summary>
    private List<JinjaNode> ParseBody(string[] ends, out string end, JinjaToken? opener)
    {
        var nodes = new List<JinjaNode>();
        while (true)
        {
            var token = Peek;
            switch (token.Kind)
            {
                case JinjaTokenKind.End:
                    if (opener is { } open)
                    {
                        throw Error(token, $"unexpected end of template: the '{open.Value}' tag at line {open.Line}, column {open.Column} is not closed ('{string.Join("' or '", ends)}' expected)");
                    }
                    end = "";
                    return nodes;
                case JinjaTokenKind.Text:
                    Next();
                    nodes.Add(new TextNode(SourcePos.Of(token), token.Value));
                    break;
                case JinjaTokenKind.VariableBegin:
                    Next();
                    var value = ParseExpression();
                    Expect(JinjaTokenKind.VariableEnd, "'}}'");
                    nodes.Add(new OutputNode(SourcePos.Of(token), value));
                    break;
                case JinjaTokenKind.BlockBegin:
                    Next();
                    var name = Peek;
                    if (name.Kind != JinjaTokenKind.Name)
                    {
                        throw Error(name, $"a tag name expected after '{{%', found {name}");
                    }
                    Next();
                    if (Array.IndexOf(ends, name.Value) >= 0)
                    {
                        end = name.Value;
                        return nodes;
                    }
                    Enter();
                    nodes.Add(ParseStatement(name));
                    _depth--;
                    break;
                default:
                    throw Error(token, $"unexpected {token}");
            }
        }
    }

    private JinjaNode ParseStatement(JinjaToken tag)
    {
        var at = SourcePos.Of(tag);
        switch (tag.Value)
        {
            case "if":
                return ParseIf(tag);
            case "for":
                return ParseFor(tag);
            case "set":
                return ParseSet(tag);
            case "break" or "continue":
                if (_loops == 0)
                {
                    throw Error(tag, $"'{tag.Value}' outside a for loop");
                }
                ExpectBlockEnd();
                return new LoopControlNode(at, tag.Value == "break");
            case "generation":
                ExpectBlockEnd();
                var body = ParseBody(["endgeneration"], out _, tag);
                ExpectBlockEnd();
                return new BlockNode(at, body);
            case "elif" or "else" or "endif" or "endfor" or "endset" or "endgeneration":
                throw Error(tag, $"unexpected '{tag.Value}' (no open tag it closes)");
            default:
                throw Error(tag, Unsupported.Contains(tag.Value)
                    ? $"the '{tag.Value}' tag is not supported by this chat-template renderer"
                    : $"unknown tag '{tag.Value}'");
        }
    }

    private IfNode ParseIf(JinjaToken tag)
    {
        var branches = new List<(JinjaExpr, IReadOnlyList<JinjaNode>)>();
        var test = ParseExpression();
        ExpectBlockEnd();
        while (true)
        {
            var body = ParseBody(["elif", "else", "endif"], out string end, tag);
            branches.Add((test, body));
            if (end == "elif")
            {
                test = ParseExpression();
                ExpectBlockEnd();
                continue;
            }
            ExpectBlockEnd();
            IReadOnlyList<JinjaNode> otherwise = [];
            if (end == "else")
            {
                otherwise = ParseBody(["endif"], out _, tag);
                ExpectBlockEnd();
            }
            return new IfNode(SourcePos.Of(tag), branches, otherwise);
        }
    }

    private ForNode ParseFor(JinjaToken tag)
    {
        var targets = new List<string> { ExpectName() };
        while (Peek.IsOperator(","))
        {
            Next();
            targets.Add(ExpectName());
        }
        if (!Peek.IsName("in"))
        {
            throw Error(Peek, $"'in' expected in the for tag, found {Peek}");
        }
        Next();
        var iterable = ParseExpression(withConditional: false);
        JinjaExpr? filter = null;
        if (Peek.IsName("if"))
        {
            Next();
            filter = ParseExpression();
        }
        if (Peek.IsName("recursive"))
        {
            throw Error(Peek, "recursive for loops are not supported by this chat-template renderer");
        }
        ExpectBlockEnd();
        _loops++;
        var body = ParseBody(["else", "endfor"], out string end, tag);
        _loops--;
        ExpectBlockEnd();
        IReadOnlyList<JinjaNode> otherwise = [];
        if (end == "else")
        {
            otherwise = ParseBody(["endfor"], out _, tag);
            ExpectBlockEnd();
        }
        return new ForNode(SourcePos.Of(tag), targets, iterable, filter, body, otherwise);
    }

    private JinjaNode ParseSet(JinjaToken tag)
    {
        string name = ExpectName();
        string? attribute = null;
        if (Peek.IsOperator("."))
        {
            Next();
            attribute = ExpectName();
        }
        if (attribute == null && Peek.Kind == JinjaTokenKind.BlockEnd)
        {
            Next();
            var body = ParseBody(["endset"], out _, tag);
            ExpectBlockEnd();
            return new SetBlockNode(SourcePos.Of(tag), name, body);
        }
        if (Peek.IsOperator(","))
        {
            throw Error(Peek, "assigning several names in one set tag is not supported by this chat-template renderer");
        }
        ExpectOperator("=");
        var value = ParseExpression();
        ExpectBlockEnd();
        return new SetNode(SourcePos.Of(tag), name, attribute, value);
    }
}
