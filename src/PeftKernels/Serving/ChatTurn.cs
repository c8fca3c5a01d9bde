// One message of a chat as the chat-template renderers take it: the role ("system", "user",
// "assistant", ...) and its text.
namespace PeftKernels.Serving;

/// <summary>One message of a conversation: its role (<c>system</c>, <c>user</c>, <c>assistant</c>, ...) and its text.</summary>
/// <param name="Role">The speaker's role.</param>
/// <param name="Content">The message text.</param>
public sealed record ChatTurn(string Role, string Content);
