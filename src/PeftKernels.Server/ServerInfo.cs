namespace PeftKernels.Server;

/// <summary>Facts about this server build that the HTTP API reports (the <c>owned_by</c> field of <c>/v1/models</c>, the <c>Server</c> name in logs).</summary>
public static class ServerInfo
{
    /// <summary>The name the server gives itself: <c>owned_by</c> of every model it lists.</summary>
    public const string Name = "peftkernels";
}
