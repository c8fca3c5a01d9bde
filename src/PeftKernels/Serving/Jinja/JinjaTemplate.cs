namespace PeftKernels.Serving.Jinja;

/// <summary>
/// A parsed template of the Jinja subset the chat templates of common models use (see docs/chat-templates.md):
/// parse once, render many times. Every failure, at parse or render time, is a <see cref="ChatTemplateException"/>.
/// </summary>
internal sealed class JinjaTemplate
{
    private readonly IReadOnlyList<JinjaNode> _body;

    private JinjaTemplate(IReadOnlyList<JinjaNode> body) => _body = body;

    public static JinjaTemplate Parse(string source) => new(Guard(() => JinjaParser.Parse(source)));

    /// <summary>The rendered text; variables are plain values (null, bool, long, double, string, List, Dictionary; see JinjaValues.cs).</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables) => Guard(() => JinjaEvaluator.Render(_body, variables));

    private static T Guard<T>(Func<T> body)
    {
        try
        {
            return body();
        }
        catch (ChatTemplateException)
        {
            throw;
        }
        catch (Exception e) when (e is InvalidCastException or ArgumentException or InvalidOperationException or IndexOutOfRangeException
            or OverflowException or NullReferenceException or KeyNotFoundException or FormatException)
        {
            // A defect of this renderer on an unusual template: still a template error to the caller, never a crash.
            throw new ChatTemplateException($"the template could not be rendered ({e.GetType().Name}: {e.Message})");
        }
    }
}
