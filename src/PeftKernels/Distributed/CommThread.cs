// The thread that runs a communicator's collective operations one after another, in the order they
// were queued: MPI needs every call from one thread (MPI_THREAD_FUNNELED), and a blocking collective
// can only be timed out from outside it. Callers queue an operation and wait for its task at most
// the timeout; a timeout or a failed operation breaks the communicator (every later call fails with
// the first error), because the ranks no longer agree on which operation comes next.
using System.Collections.Concurrent;
using System.Globalization;

namespace PeftKernels.Distributed;

internal sealed class CommThread : IDisposable
{
    private readonly BlockingCollection<(Action Run, TaskCompletionSource Done)> queue = [];
    private readonly Thread thread;
    private readonly string who;
    private volatile Exception? broken;

    public CommThread(string who, TimeSpan timeout)
    {
        this.who = who;
        Timeout = timeout;
        thread = new Thread(Loop) { IsBackground = true, Name = who };
        thread.Start();
    }

    public TimeSpan Timeout { get; }

    /// <summary>The first failure (null while the communicator works).</summary>
    public Exception? Broken => broken;

    /// <summary>Queues <paramref name="operation"/>; the task completes when it has run.</summary>
    public Task Start(string name, Action operation)
    {
        if (broken is { } e)
        {
            throw new CommunicationException($"{who}: {name} refused: the communicator failed earlier ({e.Message})", e);
        }

        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        queue.Add((() =>
        {
            try
            {
                operation();
            }
            catch (Exception ex)
            {
                throw new CommunicationException($"{who}: {name} failed: {ex.Message}", ex);
            }
        }, done));
        return done.Task;
    }

    /// <summary>Waits for a queued operation at most <see cref="Timeout"/>.</summary>
    public void Wait(Task operation, string name)
    {
        ArgumentNullException.ThrowIfNull(operation);
        bool finished;
        try
        {
            finished = operation.Wait(Timeout);
        }
        catch (AggregateException e) when (e.InnerException is CommunicationException inner)
        {
            broken ??= inner;
            throw inner;
        }

        if (!finished)
        {
            var timeout = new CommunicationException(string.Create(CultureInfo.InvariantCulture,
                $"{who}: {name} did not complete within {Timeout.TotalSeconds:0.#} s: a peer rank stopped (crashed or was killed), is stuck, or is far slower; every rank must run the same steps with the same options"));
            broken ??= timeout;
            throw timeout;
        }
    }

    /// <summary>Queues and waits.</summary>
    public void Run(string name, Action operation) => Wait(Start(name, operation), name);

    public void Dispose()
    {
        queue.CompleteAdding();
        if (broken == null)
        {
            thread.Join(Timeout);
        }
    }

    private void Loop()
    {
        foreach (var (run, done) in queue.GetConsumingEnumerable())
        {
            if (broken is { } e)
            {
                done.SetException(new CommunicationException($"{who}: the communicator failed earlier ({e.Message})", e));
                continue;
            }

            try
            {
                run();
                done.SetResult();
            }
            catch (Exception ex)
            {
                broken ??= ex;
                done.SetException(ex);
            }
        }
    }
}
