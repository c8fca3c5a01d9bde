namespace PeftKernels.Serving;

/// <summary>
/// A chat template that cannot be parsed or rendered: a syntax error (with the template's line and column), an
/// unsupported construct, a runtime type error, or a template's own <c>raise_exception('...')</c> (for example
/// a conversation whose roles do not alternate), whose text is <see cref="RaisedMessage"/> and the message itself.
/// </summary>
public sealed class ChatTemplateException : Exception
{
    /// <summary>An error found in the template (line and column are 1-based; 0 where not known).</summary>
    public ChatTemplateException(string message, int line = 0, int column = 0)
        : base(line > 0 ? $"chat template line {line}, column {column}: {message}" : $"chat template: {message}")
    {
        Line = line;
        Column = column;
        Detail = message;
    }

    private ChatTemplateException(string raised, bool fromTemplate)
        : base(raised)
    {
        RaisedMessage = fromTemplate ? raised : null;
        Detail = raised;
    }

    private ChatTemplateException(string message, ChatTemplateException inner)
        : base(message, inner)
    {
        Line = inner.Line;
        Column = inner.Column;
        Detail = inner.Detail;
        RaisedMessage = inner.RaisedMessage;
    }

    /// <summary>This error with <paramref name="source"/> (the file and field the template came from) in front of its message.</summary>
    internal ChatTemplateException From(string source) => new($"{source}: {Message}", this);

    /// <summary>The template's own rejection of the input, <c>raise_exception(message)</c>: the message is the template's text.</summary>
    public static ChatTemplateException Raised(string message) => new(message, fromTemplate: true);

    /// <summary>The 1-based line of the error in the template text; 0 where not known.</summary>
    public int Line { get; }

    /// <summary>The 1-based column of the error in the template text; 0 where not known.</summary>
    public int Column { get; }

    /// <summary>The message without its location prefix (for attaching a location found later).</summary>
    internal string Detail { get; }

    /// <summary>The text the template passed to <c>raise_exception</c>; null for any other error. A request error (HTTP 400), not a server fault.</summary>
    public string? RaisedMessage { get; }
}
