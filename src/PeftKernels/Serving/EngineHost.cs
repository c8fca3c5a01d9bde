// Who steps the engine: an InferenceEngine does nothing until someone calls Step, RunUntilIdle or
// RunAsync. EngineHost runs engine.RunAsync on a background task for as long as it lives (the server
// and EngineChatClient both use one); DisposeAsync stops the loop, waits for it, and disposes the engine
// (every sequence still queued or running finishes as cancelled, so no caller waits forever).
using PeftKernels.Engine;

namespace PeftKernels.Serving;

/// <summary>Runs an <see cref="InferenceEngine"/>'s step loop on a background task until disposed.</summary>
public sealed class EngineHost : IAsyncDisposable, IDisposable
{
    private readonly CancellationTokenSource stop = new();
    private readonly Task loop;
    private int disposed;

    /// <summary>Starts stepping <paramref name="engine"/> (the host owns it from now on and disposes it).</summary>
    public EngineHost(InferenceEngine engine)
    {
        ArgumentNullException.ThrowIfNull(engine);
        Engine = engine;
        loop = Task.Factory.StartNew(() => Loop(engine, stop.Token), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <summary>The engine being stepped.</summary>
    public InferenceEngine Engine { get; }

    /// <summary>The last failure of a step, if one threw (the engine finished that step's sequences with the error; the loop goes on).</summary>
    public Exception? Failure { get; private set; }

    /// <summary>Stops the loop, waits for the step in progress, and disposes the engine.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0)
        {
            return;
        }

        await stop.CancelAsync().ConfigureAwait(false);
        await loop.ConfigureAwait(false);
        Engine.Dispose();
        stop.Dispose();
    }

    /// <inheritdoc cref="DisposeAsync"/>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    private async Task Loop(InferenceEngine engine, CancellationToken token)
    {
        while (!token.IsCancellationRequested)
        {
            try
            {
                await engine.RunAsync(token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // A failed step finished its planned sequences with the error; the others keep running.
                Failure = e;
            }
        }
    }
}
