namespace PeftKernels.Training;

/// <summary>
/// An <see cref="IProgress{T}"/> that calls its handler on the reporting thread, at once and in order
/// (System.Progress posts to the captured context or the thread pool, so console reports can arrive late).
/// </summary>
/// <typeparam name="T">The report type.</typeparam>
public sealed class ProgressCallback<T>(Action<T> handler) : IProgress<T>
{
    /// <inheritdoc/>
    public void Report(T value) => handler(value);
}
