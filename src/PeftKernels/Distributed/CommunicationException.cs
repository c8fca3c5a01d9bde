namespace PeftKernels.Distributed;

/// <summary>A collective operation failed: a peer rank stopped or is stuck (timeout), or the communication library reported an error.</summary>
public sealed class CommunicationException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CommunicationException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception around its cause.</summary>
    public CommunicationException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
