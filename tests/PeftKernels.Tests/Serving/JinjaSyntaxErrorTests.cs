using PeftKernels.Serving;
using PeftKernels.Serving.Jinja;

namespace PeftKernels.Tests.Serving;

/// <summary>
/// Syntax errors name the template's line and column; unsupported constructs are refused by name; and no malformed
/// or hostile template makes the renderer throw anything but <see cref="ChatTemplateException"/> or run away.
/// </summary>
public class JinjaSyntaxErrorTests
{
    [Theory]
    [InlineData("line1\n{{ 1 + }}", 2, 8, "unexpected '}}'")]
    [InlineData("{{ 'abc' }", 1, 10, "unexpected '}'")]
    [InlineData("x{{ 'abc' ", 1, 2, "the tag '{{' is not closed")]
    [InlineData("ab\n  {{ 'abc }}", 2, 6, "string is not closed")]
    [InlineData("{# open", 1, 1, "comment is not closed")]
    [InlineData("{% if true %}x", 1, 15, "'if' tag at line 1, column 4 is not closed")]
    [InlineData("x\n\n{% endfor %}", 3, 4, "unexpected 'endfor'")]
    [InlineData("{% macro m() %}{% endmacro %}", 1, 4, "'macro' tag is not supported")]
    [InlineData("{% raw %}x{% endraw %}", 1, 4, "'raw' tag is not supported")]
    [InlineData("{% include 'x' %}", 1, 4, "'include' tag is not supported")]
    [InlineData("{% frobnicate %}", 1, 4, "unknown tag 'frobnicate'")]
    [InlineData("{{ x | nosuchfilter }}", 1, 8, "unknown filter 'nosuchfilter'")]
    [InlineData("{{ x is nosuchtest }}", 1, 9, "unknown test 'nosuchtest'")]
    [InlineData("{% for x in [1] recursive %}{% endfor %}", 1, 17, "recursive")]
    [InlineData("{% break %}", 1, 4, "outside a for loop")]
    [InlineData("{{ a b }}", 1, 6, "'}}' expected")]
    [InlineData("{{ 1 @ 2 }}", 1, 6, "unexpected character '@'")]
    [InlineData("{% set a, b = 1, 2 %}", 1, 9, "several names")]
    public void SyntaxErrors_NameLineAndColumn(string template, int line, int column, string message)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template));
        Assert.Contains(message, e.Message);
        Assert.Equal((line, column), (e.Line, e.Column));
        Assert.Contains($"line {line}, column {column}", e.Message);
    }

    [Fact]
    public void RuntimeError_NamesTheLineOfTheExpression()
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("ok\n  {{ 1 + 'a' }}").Render([], false));
        Assert.Equal(2, e.Line);
        Assert.Equal(8, e.Column);
    }

    public static TheoryData<string> BrokenTemplates() =>
    [
        "{{", "{%", "{#", "{{ }}", "{% %}", "{% if %}", "{% for %}", "{% for x in %}", "{% for x y %}", "{% set %}", "{% set x %}",
        "{% set x = %}", "{{ ((( }}", "{{ [1, 2 }}", "{{ {'a' 1} }}", "{{ x.y.z( }}", "{{ 1 +* 2 }}", "{% if true %}{% elif %}{% endif %}",
        "{% endif %}", "{% else %}", "{% if true %}{% else %}{% else %}{% endif %}", "{{ x | }}", "{{ x is }}", "{{ 'a' ~ }}",
        "{{ 10000000000000000000000 }}", "{{ f(a=1, 2) }}", "{{ ) }}", "}}{{ ] }}", "{% for x in [1] %}",
        "{{ (" + new string('(', 5000) + "1" + new string(')', 5000) + " }}",
        "{{ " + new string('-', 20000) + "1 }}",
        "{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "1 }}",
        string.Concat(Enumerable.Repeat("{% if true %}", 2000)) + string.Concat(Enumerable.Repeat("{% endif %}", 2000)),
        "{{ " + string.Concat(Enumerable.Repeat("[", 3000)) + string.Concat(Enumerable.Repeat("]", 3000)) + " }}",
        // Parse, then fail at render time.
        "{{ {1: 2} }}", "{{ 2 ** 100 }}", "{{ 'a' * 100000000 }}", "{{ [1] * 100000000 }}", "{{ range(1, 2, 0) }}",
        "{{ range(100000000) }}", "{{ none() }}", "{{ 'abc'.nosuch() }}", "{{ 1 // 0 }}", "{{ 1.0 % 0 }}", "{{ -(9223372036854775807 + 1) }}",
        "{% for a, b in [1, 2] %}{% endfor %}", "{{ 'a'.split('') }}", "{{ 'x' | replace('', 'y') }}", "{{ 1 | tojson(indent=-1) }}",
        "{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
        "{{ " + string.Concat(Enumerable.Repeat("1 + ", 5000)) + "1 }}",
        "{% set ns = namespace() %}{{ ns.a.b + 1 }}", "{{ 'a' < [1] }}", "{{ raise_exception() }}", "{{ loop.index }}{{ loop.cycle() }}",
    ];

    [Theory]
    [MemberData(nameof(BrokenTemplates))]
    public void BrokenTemplate_ThrowsChatTemplateException(string template)
    {
        var started = DateTime.UtcNow;
        Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template).Render([new("user", "hi")], true));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(10), "the renderer took too long");
    }

    [Fact]
    public void RandomFragmentSoup_NeverThrowsAnythingElse()
    {
        string[] pieces =
        [
            "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", " if ", " for ", " in ", " endif ", " endfor ", " else ", " set ", " = ",
            " x ", " messages ", "[", "]", "(", ")", "{", "}", "'a'", "\"b\"", "1", "2.5", " | trim", " | length", " is defined", " not ",
            " and ", " or ", " + ", " ~ ", " == ", ".", ",", ":", "\n", "  ", "loop.index", "raise_exception", "'", "\\",
        ];
        var random = new Random(16);
        int rendered = 0;
        for (int i = 0; i < 3000; i++)
        {
            string template = string.Concat(Enumerable.Range(0, random.Next(1, 14)).Select(_ => pieces[random.Next(pieces.Length)]));
            try
            {
                ChatTemplate.Parse(template).Render([new("user", "hi")], true);
                rendered++;
            }
            catch (ChatTemplateException)
            {
            }
        }
        Assert.InRange(rendered, 1, 2999);
    }

    [Fact]
    public void DepthLimit_IsWideEnoughForRealTemplates()
    {
        string nested = string.Concat(Enumerable.Repeat("{% if true %}", 50)) + "deep" + string.Concat(Enumerable.Repeat("{% endif %}", 50));
        Assert.Equal("deep", JinjaTemplate.Parse(nested).Render(new Dictionary<string, object?>()));
        Assert.Equal("1", JinjaEvaluatorTests.Render("{{ " + new string('(', 60) + "1" + new string(')', 60) + " }}"));
    }
}
