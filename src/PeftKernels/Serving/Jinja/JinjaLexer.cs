using System.Globalization;
using System.Text;

namespace PeftKernels.Serving.Jinja;

/// <summary>
/// Splits a template into text and tag tokens, applying Jinja's whitespace rules as Hugging Face's
/// <c>apply_chat_template</c> configures them: <c>trim_blocks=True</c> (the first newline after a block or comment
/// tag is removed), <c>lstrip_blocks=True</c> (spaces and tabs before a block or comment tag that starts a line are
/// removed), <c>{%-</c>/<c>-%}</c> (and the <c>{{-</c>, <c>{#-</c> forms) strip all whitespace on that side,
/// <c>{%+</c>/<c>+%}</c> disable lstrip/trim for that tag; newlines are normalised to <c>\n</c> and one trailing
/// newline of the template is dropped (<c>keep_trailing_newline=False</c>).
/// </summary>
internal sealed class JinjaLexer
{
    private static readonly string[] Operators =
        ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "=", "<", ">"];

    private readonly string _src;
    private readonly List<int> _lineStarts = [0];
    private readonly List<JinjaToken> _tokens = [];
    private int _pos;
    private bool _lineStarting = true;

    private JinjaLexer(string source)
    {
        string s = source.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        _src = s.EndsWith('\n') ? s[..^1] : s;
        for (int i = 0; i < _src.Length; i++)
        {
            if (_src[i] == '\n')
            {
                _lineStarts.Add(i + 1);
            }
        }
    }

    /// <summary>The tokens of <paramref name="source"/>, ending with one <see cref="JinjaTokenKind.End"/> token.</summary>
    public static List<JinjaToken> Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return lexer._tokens;
    }

    private (int Line, int Column) Where(int pos)
    {
        int line = _lineStarts.BinarySearch(pos);
        if (line < 0)
        {
            line = ~line - 1;
        }
        return (line + 1, pos - _lineStarts[line] + 1);
    }

    private ChatTemplateException Error(string message, int pos)
    {
        var (line, column) = Where(pos);
        return new ChatTemplateException(message, line, column);
    }

    private void Add(JinjaTokenKind kind, string value, int pos)
    {
        var (line, column) = Where(pos);
        _tokens.Add(new JinjaToken(kind, value, line, column));
    }

    private void Run()
    {
        while (true)
        {
            int tag = NextTag(_pos);
            if (tag < 0)
            {
                if (_pos < _src.Length)
                {
                    Add(JinjaTokenKind.Text, _src[_pos..], _pos);
                }
                Add(JinjaTokenKind.End, "", _src.Length);
                return;
            }
            char type = _src[tag + 1];
            char marker = tag + 2 < _src.Length ? _src[tag + 2] : '\0';
            string text = _src[_pos..tag];
            if (marker == '-')
            {
                text = text.TrimEnd();
            }
            else if (type != '{' && marker != '+')
            {
                int lineStart = text.LastIndexOf('\n') + 1;
                if ((lineStart > 0 || _lineStarting) && text.AsSpan(lineStart).TrimStart(" \t").IsEmpty)
                {
                    text = text[..lineStart];
                }
            }
            if (text.Length > 0)
            {
                Add(JinjaTokenKind.Text, text, _pos);
            }
            int inner = tag + 2 + (marker is '-' or '+' ? 1 : 0);
            if (type == '#')
            {
                int close = _src.IndexOf("#}", inner, StringComparison.Ordinal);
                if (close < 0)
                {
                    throw Error("the comment is not closed ('#}' expected)", tag);
                }
                FinishTag(close + 2, _src[close - 1], block: true);
            }
            else
            {
                LexTag(tag, inner, block: type == '%');
            }
        }
    }

    private int NextTag(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
        {
            if (_src[i + 1] is '{' or '%' or '#')
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>Moves past a tag that ends just before <paramref name="after"/>; <paramref name="marker"/> is the character before the closing delimiter.</summary>
    private void FinishTag(int after, char marker, bool block)
    {
        _pos = after;
        if (marker == '-')
        {
            while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos]))
            {
                _pos++;
            }
        }
        else if (block && marker != '+' && _pos < _src.Length && _src[_pos] == '\n')
        {
            _pos++;
        }
        _lineStarting = _pos > 0 && _src[_pos - 1] == '\n';
    }

    private void LexTag(int tag, int i, bool block)
    {
        Add(block ? JinjaTokenKind.BlockBegin : JinjaTokenKind.VariableBegin, block ? "{%" : "{{", tag);
        char closer = block ? '%' : '}';
        int depth = 0;
        while (true)
        {
            while (i < _src.Length && char.IsWhiteSpace(_src[i]))
            {
                i++;
            }
            if (i >= _src.Length)
            {
                throw Error($"the tag '{(block ? "{%" : "{{")}' is not closed ('{closer}}}' expected)", tag);
            }
            if (depth == 0)
            {
                if (_src[i] == closer && At(i + 1, '}'))
                {
                    Add(block ? JinjaTokenKind.BlockEnd : JinjaTokenKind.VariableEnd, closer + "}", i);
                    FinishTag(i + 2, ' ', block);
                    return;
                }
                if ((_src[i] == '-' || (block && _src[i] == '+')) && At(i + 1, closer) && At(i + 2, '}'))
                {
                    Add(block ? JinjaTokenKind.BlockEnd : JinjaTokenKind.VariableEnd, closer + "}", i);
                    FinishTag(i + 3, _src[i], block);
                    return;
                }
            }
            char c = _src[i];
            if (c is '\'' or '"')
            {
                i = LexString(i);
            }
            else if (char.IsAsciiDigit(c))
            {
                i = LexNumber(i);
            }
            else if (char.IsAsciiLetter(c) || c == '_')
            {
                int start = i;
                while (i < _src.Length && (char.IsAsciiLetterOrDigit(_src[i]) || _src[i] == '_'))
                {
                    i++;
                }
                Add(JinjaTokenKind.Name, _src[start..i], start);
            }
            else
            {
                string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(_src, i, o, 0, o.Length) == 0);
                if (op == null)
                {
                    throw Error($"unexpected character '{c}'", i);
                }
                depth += op is "(" or "[" or "{" ? 1 : op is ")" or "]" or "}" ? -1 : 0;
                if (depth < 0)
                {
                    throw Error($"unexpected '{op}'", i);
                }
                Add(JinjaTokenKind.Operator, op, i);
                i += op.Length;
            }
        }
    }

    private bool At(int i, char c) => i < _src.Length && _src[i] == c;

    private int LexString(int start)
    {
        char quote = _src[start];
        var sb = new StringBuilder();
        int i = start + 1;
        while (true)
        {
            if (i >= _src.Length)
            {
                throw Error("the string is not closed", start);
            }
            char c = _src[i++];
            if (c == quote)
            {
                break;
            }
            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }
            if (i >= _src.Length)
            {
                throw Error("the string is not closed", start);
            }
            char e = _src[i++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case '\n': break;
                case 'u' or 'x' or 'U':
                    int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    if (i + digits > _src.Length || !int.TryParse(_src.AsSpan(i, digits), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int code)
                        || code > 0x10FFFF || (code is >= 0xD800 and <= 0xDFFF))
                    {
                        throw Error($"invalid \\{e} escape in a string", i - 2);
                    }
                    sb.Append(char.ConvertFromUtf32(code));
                    i += digits;
                    break;
                default:
                    // Python keeps the backslash of an unknown escape.
                    sb.Append('\\').Append(e);
                    break;
            }
        }
        Add(JinjaTokenKind.String, sb.ToString(), start);
        return i;
    }

    private int LexNumber(int start)
    {
        int i = start;
        bool isFloat = false;
        while (i < _src.Length && (char.IsAsciiDigit(_src[i]) || _src[i] == '_'))
        {
            i++;
        }
        if (i + 1 < _src.Length && _src[i] == '.' && char.IsAsciiDigit(_src[i + 1]))
        {
            isFloat = true;
            i++;
            while (i < _src.Length && (char.IsAsciiDigit(_src[i]) || _src[i] == '_'))
            {
                i++;
            }
        }
        if (i < _src.Length && _src[i] is 'e' or 'E')
        {
            int j = i + 1;
            if (j < _src.Length && _src[j] is '+' or '-')
            {
                j++;
            }
            if (j < _src.Length && char.IsAsciiDigit(_src[j]))
            {
                isFloat = true;
                i = j;
                while (i < _src.Length && char.IsAsciiDigit(_src[i]))
                {
                    i++;
                }
            }
        }
        string text = _src[start..i].Replace("_", "", StringComparison.Ordinal);
        if (isFloat)
        {
            Add(JinjaTokenKind.Float, text, start);
        }
        else
        {
            if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out _))
            {
                throw Error($"the integer {text} is too large", start);
            }
            Add(JinjaTokenKind.Integer, text, start);
        }
        return i;
    }
}
