namespace PeftKernels.Serving;

/// <summary>One message of a chat: its role (system, user, assistant) and its text.</summary>
public sealed record ChatTurn(string Role, string Content);
