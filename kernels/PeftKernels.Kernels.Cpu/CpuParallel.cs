using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace PeftKernels.Kernels.Cpu;

// Fork-join on dedicated kernel threads. Item t always runs on thread t (item 0 on the
// caller), so a slow-to-wake worker delays its own item instead of the caller taking it
// over and serialising the work (which the thread pool's work stealing did, in a VM where
// an idle vCPU can take a millisecond to wake). Workers spin briefly after each item, since
// a GEMM issues one fork-join per K block in quick succession. Each item's work is a fixed
// function of its index, so results never depend on scheduling; when the workers are busy
// with another caller, the items simply run one after another on the calling thread.
// One completion counter, reset under the gate, serves every fork-join: a call whose body is a
// cached delegate allocates nothing (the decode loop issues several fork-joins per token). The caller spins
// up to 0.5 ms for the workers before it blocks (Join).
internal static class CpuParallel
{
    /// <summary>How long the caller spins for the workers before it blocks (0.5 ms).</summary>
    private static readonly long JoinSpinTicks = Stopwatch.Frequency / 2000;
    private static readonly Lock Gate = new();
    private static readonly CountdownEvent Done = new(1);
    private static Worker[] workers = [];

    public static void For(int items, int threads, Action<int> body)
    {
        if (items <= 0)
        {
            return;
        }

        if (threads <= 1 || items == 1 || !Gate.TryEnter())
        {
            for (int t = 0; t < items; t++)
            {
                body(t);
            }

            return;
        }

        try
        {
            if (workers.Length < items - 1)
            {
                workers = [.. workers, .. Enumerable.Range(workers.Length, items - 1 - workers.Length).Select(i => new Worker(i + 1))];
            }

            var done = Done;
            done.Reset(items - 1);
            for (int t = 1; t < items; t++)
            {
                workers[t - 1].Start(body, t, done);
            }

            Exception? error = null;
            try
            {
                body(0);
            }
            catch (Exception ex)
            {
                error = ex;
            }

            Join(done);
            for (int t = 1; t < items; t++)
            {
                error ??= workers[t - 1].TakeError();
            }

            if (error != null)
            {
                ExceptionDispatchInfo.Capture(error).Throw();
            }
        }
        finally
        {
            Gate.Exit();
        }
    }

    /// <summary>
    /// Waits for the workers' items: spins up to <see cref="JoinSpinTicks"/> first, then blocks. A CountdownEvent alone
    /// blocks after a few dozen spins, and a worker that ends its last unit a little after the caller then pays a
    /// futex wake of the caller (tens of microseconds to a millisecond in a VM) on every fork-join; a GEMM issues two
    /// per K block.
    /// </summary>
    private static void Join(CountdownEvent done)
    {
        if (!done.IsSet)
        {
            long until = Stopwatch.GetTimestamp() + JoinSpinTicks;
            while (!done.IsSet && Stopwatch.GetTimestamp() < until)
            {
                Thread.SpinWait(20);
            }
        }

        done.Wait();
    }

    /// <summary>[start, end) of part <paramref name="part"/> when <paramref name="count"/> units are split in <paramref name="parts"/> near-equal contiguous parts.</summary>
    public static (int Start, int End) Split(int count, int parts, int part) =>
        ((int)((long)count * part / parts), (int)((long)count * (part + 1) / parts));

    private sealed class Worker
    {
        private readonly ManualResetEventSlim go = new(false, 2047);
        private Action<int>? body;
        private int index;
        private CountdownEvent? done;
        private Exception? error;

        public Worker(int id)
        {
            var thread = new Thread(Loop) { IsBackground = true, Name = $"PeftKernels worker {id}" };
            thread.Start();
        }

        public void Start(Action<int> work, int item, CountdownEvent completion)
        {
            body = work;
            index = item;
            done = completion;
            go.Set();
        }

        public Exception? TakeError()
        {
            var e = error;
            error = null;
            return e;
        }

        private void Loop()
        {
            while (true)
            {
                go.Wait();
                go.Reset();
                try
                {
                    body!(index);
                }
                catch (Exception ex)
                {
                    error = ex;
                }

                body = null;
                done!.Signal();
            }
        }
    }
}
