namespace PeftKernels.Tests.Serving;

/// <summary>Comments, whitespace control and Hugging Face's trim_blocks / lstrip_blocks / keep_trailing_newline=False.</summary>
public class JinjaWhitespaceTests
{
    [Theory]
    [InlineData("a{# note #}b", "ab")]
    [InlineData("a {#- note -#} b", "ab")]
    [InlineData("a  {{- 'b' -}}  \n c", "abc")]
    [InlineData("a\n  {%- if true %}b{% endif %}", "ab")]
    [InlineData("{% if true -%}\n\n  b  {%- endif %}", "b")]
    // trim_blocks: the first newline after a block or comment tag goes, not after a variable tag.
    [InlineData("{% if true %}\nyes\n{% endif %}\nend", "yes\nend")]
    [InlineData("{# c #}\nx", "x")]
    [InlineData("{{ 'v' }}\nx", "v\nx")]
    [InlineData("{% if true %}\n\nx{% endif %}", "\nx")]
    // lstrip_blocks: spaces and tabs before a block tag that starts a line go; before a variable tag they stay.
    [InlineData("line\n    {% if true %}x{% endif %}", "line\nx")]
    [InlineData("  \t{% if true %}x{% endif %}", "x")]
    [InlineData("line\n    {{ 'x' }}", "line\n    x")]
    [InlineData("a  {% if true %}x{% endif %}", "a  x")]
    [InlineData("{{ 'v' }}  {% if true %}x{% endif %}", "v  x")]
    [InlineData("{% if true %}\n    {% if true %}\n        in\n    {% endif %}\n{% endif %}\n", "        in\n")]
    // '+' turns lstrip / trim off for one tag.
    [InlineData("a\n  {%+ if true %}x{% endif %}", "a\n  x")]
    [InlineData("{% if true +%}\nx{% endif %}", "\nx")]
    // keep_trailing_newline=False: one trailing newline of the template is dropped; \r\n becomes \n.
    [InlineData("a\n", "a")]
    [InlineData("a\n\n", "a\n")]
    [InlineData("a\r\nb", "a\nb")]
    [InlineData("{{ {'a': {'b': 1}} }}", "{'a': {'b': 1}}")]
    [InlineData("{{ 1 }}}", "1}")]
    public void Whitespace(string template, string expected) => Assert.Equal(expected, JinjaEvaluatorTests.Render(template));
}
