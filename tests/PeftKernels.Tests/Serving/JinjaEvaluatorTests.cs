using PeftKernels.Serving;
using PeftKernels.Serving.Jinja;

namespace PeftKernels.Tests.Serving;

/// <summary>Each construct of the Jinja subset, rendered as Jinja (with Hugging Face's trim_blocks and lstrip_blocks) renders it.</summary>
public class JinjaEvaluatorTests
{
    internal static string Render(string template, Dictionary<string, object?>? variables = null) =>
        JinjaTemplate.Parse(template).Render(variables ?? []);

    private static Dictionary<string, object?> Vars() => new()
    {
        ["d"] = new Dictionary<string, object?> { ["k"] = 1L, ["role"] = "user" },
        ["x"] = new Dictionary<string, object?> { ["y"] = "v" },
        ["n"] = 2L,
        ["messages"] = new List<object?>
        {
            new Dictionary<string, object?> { ["role"] = "system", ["content"] = "S" },
            new Dictionary<string, object?> { ["role"] = "user", ["content"] = "U" },
        },
    };

    [Theory]
    [InlineData("Hello", "Hello")]
    [InlineData("{{ 'a' + 'b' }}", "ab")]
    [InlineData("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 2 ** 10 }}|{{ -3 + 1 }}", "7|9|1024|-2")]
    [InlineData("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }}", "3 -4 1 2")]
    [InlineData("{{ 7 / 2 }} {{ 4 / 2 }} {{ 1.5 * 2 }} {{ 0.1 + 0.2 }}", "3.5 2.0 3.0 0.30000000000000004")]
    [InlineData("{{ 'ab' * 3 }}", "ababab")]
    [InlineData("{{ 'a' ~ 1 ~ none ~ true }}", "a1NoneTrue")]
    [InlineData("{{ [1, 'a', none, true, 2.5] }}", "[1, 'a', None, True, 2.5]")]
    [InlineData("{{ {'k': 'v', 'n': [1]} }}", "{'k': 'v', 'n': [1]}")]
    [InlineData("{{ \"it's\" }} {{ 'a\\nb' }} {{ 'tab\\there' }} {{ 'q\\'s' }}", "it's a\nb tab\there q's")]
    [InlineData("{{ 'con' 'cat' }}", "concat")]
    [InlineData("{{ 'x' if true else 'y' }}{{ 'x' if false else 'y' }}[{{ 'x' if false }}]", "xy[]")]
    [InlineData("{{ not true }} {{ true and false }} {{ false or 'z' }} {{ 0 or [] }} {{ 1 and 2 }}", "False False z [] 2")]
    [InlineData("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'a' < 'b' }} {{ true == 1 }}", "True False True True True True")]
    [InlineData("{{ 'a' in 'cat' }} {{ 2 not in [1, 3] }} {{ 'k' in {'k': 1} }} {{ not 'z' in 'abc' }}", "True True True True")]
    [InlineData("{{ 'abc'[1:] }} {{ [1, 2, 3][::-1] }} {{ 'abc'[-1] }} {{ [1, 2, 3][:-1] }} {{ 'abcdef'[1:5:2] }}", "bc [3, 2, 1] c [1, 2] bd")]
    [InlineData("{{ x.y }} {{ x['y'] }} {{ messages[0]['role'] }} {{ messages[-1].content }} {{ messages[1:] | length }}", "v v system U 1")]
    [InlineData("{{ none }} {{ true }} {{ false }} {{ True }}", "None True False True")]
    public void Expressions(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("{{ '  a b \n' | trim }}|{{ 'xxaxx' | trim('x') }}", "a b|a")]
    [InlineData("{{ [1, 2] | length }} {{ 'abc' | length }} {{ d | count }}", "2 3 2")]
    [InlineData("{{ 'ab' | upper }} {{ 'AB' | lower }} {{ 'hello World' | capitalize }} {{ 'hello world' | title }}", "AB ab Hello world Hello World")]
    [InlineData("{{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join }} {{ messages | join('/', attribute='role') }}", "a, b 12 system/user")]
    [InlineData("{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | first }}", "1 3 a")]
    [InlineData("{{ u | default('d') }} {{ '' | default('d') }}. {{ '' | default('d', true) }} {{ none | d('x', boolean=true) }}", "d . d x")]
    [InlineData("{{ {'a': [1, 'é', 2.5], 'b': none, 'c': true, 'q': 'say \"hi\"\\n'} | tojson }}", "{\"a\": [1, \"é\", 2.5], \"b\": null, \"c\": true, \"q\": \"say \\\"hi\\\"\\n\"}")]
    [InlineData("{{ {'a': 1, 'b': [2]} | tojson(indent=2) }}", "{\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}")]
    [InlineData("{{ 5 | string ~ 'x' }} {{ '<b>' | safe }} {{ 'aXbX' | replace('X', '-') }} {{ 'aXbX' | replace('X', '-', 1) }}", "5x <b> a-b- a-bX")]
    [InlineData("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", "k=1;role=user;")]
    [InlineData("{{ '3' | int + 1 }} {{ 'x' | int }} {{ 2 | float }} {{ -3 | abs }} {{ [1, 2] | reverse | list }}", "4 0 2.0 3 [2, 1]")]
    [InlineData("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ messages | rejectattr('role', 'eq', 'user') | length }}", "['U'] 1")]
    public void Filters(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("{{ ' x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|", "x|a|x | x|")]
    [InlineData("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('x') }} {{ 'abc'.startswith(['x', 'a']) }}", "True False True")]
    [InlineData("{{ 'a,b'.split(',') }} {{ ' a b  c '.split() }} {{ 'a,b,c'.split(',', 1) }}", "['a', 'b'] ['a', 'b', 'c'] ['a', 'b,c']")]
    [InlineData("{{ 'aB'.upper() }} {{ 'aB'.lower() }} {{ 'ab'.replace('a', 'c') }} {{ 'ab cd'.title() }}", "AB ab cb Ab Cd")]
    [InlineData("{{ d.get('k') }} {{ d.get('z', 'no') }} {{ d.get('z') }} {{ d.keys() | list }} {{ d.values() | list }}", "1 no None ['k', 'role'] [1, 'user']")]
    [InlineData("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "k=1;role=user;")]
    public void Methods(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("{{ u is defined }} {{ u is undefined }} {{ d is defined }} {{ d.zz is defined }}", "False True True False")]
    [InlineData("{{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ 1 is not string }} {{ 1.5 is float }} {{ 1 is integer }}", "True True True True True True")]
    [InlineData("{{ d is mapping }} {{ [1] is iterable }} {{ 'a' is sequence }} {{ true is boolean }} {{ false is false }}", "True True True True True")]
    [InlineData("{{ 3 is odd }} {{ 4 is even }} {{ 4 is divisibleby 2 }} {{ 9 is divisibleby(4) }} {{ 'a' is eq 'a' }} {{ 2 is gt 1 }}", "True True True False True True")]
    [InlineData("{{ 'a' is in 'cat' }} {{ none is sameas none }} {{ 'ab' is lower }} {{ d.get is callable }}", "True True True True")]
    [InlineData("{{ not u is defined }} {{ u is defined and u.x }} {{ d is defined and d.k }}", "True False 1")]
    public void Tests(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %}", "two")]
    [InlineData("{% if n == 5 %}one{% elif n == 6 %}two{% else %}many{% endif %}", "many")]
    [InlineData("{% for c in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}|{% endfor %}",
        "10TrueFalse33|21FalseFalse32|32FalseTrue31|")]
    [InlineData("{% for c in [] %}x{% else %}empty{% endfor %}", "empty")]
    [InlineData("{% for c in [1, 2, 3, 4] if c is even %}{{ c }}{{ loop.length }}{% endfor %}", "2242")]
    [InlineData("{% for c in [1, 2, 3, 4] %}{% if c == 2 %}{% continue %}{% endif %}{% if c == 4 %}{% break %}{% endif %}{{ c }}{% endfor %}", "13")]
    [InlineData("{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }};{% endfor %}", "1x11y21;2x12y22;")]
    [InlineData("{% for m in messages %}{{ loop.previtem.role if not loop.first }}>{{ m.role }}{% endfor %}", ">systemsystem>user")]
    [InlineData("{% for k in d %}{{ k }},{% endfor %}", "k,role,")]
    [InlineData("{% for c in 'ab' %}{{ c }}{% endfor %}{% for c in u %}never{% endfor %}", "ab")]
    [InlineData("{% set v = 1 %}{% for i in [1] %}{% set v = 2 %}{{ v }}{% endfor %}{{ v }}", "21")]
    [InlineData("{% if true %}{% set v = 3 %}{% endif %}{{ v }}", "3")]
    [InlineData("{% set ns = namespace(found=false, n=0) %}{% for i in [1, 2, 3] %}{% if i >= 2 %}{% set ns.found = true %}{% set ns.n = ns.n + i %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", "True 5")]
    [InlineData("{% set v %}a{{ 1 }}{% endset %}[{{ v }}]", "[a1]")]
    [InlineData("{% for i in range(3) %}{{ i }}{% endfor %}{{ range(1, 7, 2) | list }}", "012[1, 3, 5]")]
    [InlineData("a{% generation %}b{% endgeneration %}c", "abc")]
    [InlineData("{{ dict(a=1)['a'] }}", "1")]
    public void Statements(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("[{{ u }}][{{ u.a.b }}][{{ u['x'] }}][{{ d.zz }}][{{ messages[5] }}][{{ d.k.zz }}]", "[][][][][][]")]
    [InlineData("{% if u %}yes{% else %}no{% endif %} {{ u | length }} {{ u == u }} {{ u != false }} {{ 'x' in u }} {{ u ~ 'z' }}", "no 0 True True False z")]
    public void Undefined_IsFalsyEmptyAndChainable(string template, string expected) => Assert.Equal(expected, Render(template, Vars()));

    [Theory]
    [InlineData("{{ u + 1 }}", "'u' is undefined")]
    [InlineData("{{ d.zz + 'a' }}", "has no attribute 'zz'")]
    [InlineData("{{ u() }}", "'u' is undefined")]
    [InlineData("{{ 'a' + 1 }}", "unsupported operand")]
    [InlineData("{{ 1 / 0 }}", "division by zero")]
    [InlineData("{{ 'a' < 1 }}", "not supported")]
    [InlineData("{% set d.k = 2 %}", "namespace")]
    [InlineData("{{ 'abc'.nosuch() }}", "has no attribute 'nosuch'")]
    [InlineData("{{ '%s' % 1 }}", "not supported")]
    public void RuntimeErrors_NameTheProblem(string template, string message)
    {
        var e = Assert.Throws<ChatTemplateException>(() => Render(template, Vars()));
        Assert.Contains(message, e.Message);
        Assert.Null(e.RaisedMessage);
        Assert.Equal(1, e.Line);
    }

    [Fact]
    public void RaiseException_CarriesTheTemplatesText()
    {
        var e = Assert.Throws<ChatTemplateException>(() => Render("ok{% if true %}{{ raise_exception('Roles must alternate: ' ~ n) }}{% endif %}", Vars()));
        Assert.Equal("Roles must alternate: 2", e.RaisedMessage);
        Assert.Equal("Roles must alternate: 2", e.Message);
    }
}
