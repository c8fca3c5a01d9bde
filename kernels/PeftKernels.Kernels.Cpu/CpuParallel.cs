namespace PeftKernels.Kernels.Cpu;

// Fork-join over a fixed number of work items. Each item's work is fixed by its index, never
// by which thread runs it, so results do not depend on scheduling. Items never wait for each
// other, so a starved thread pool only serialises them; it cannot deadlock.
internal static class CpuParallel
{
    public static void For(int items, int threads, Action<int> body)
    {
        if (items <= 0)
        {
            return;
        }

        if (threads <= 1 || items == 1)
        {
            for (int t = 0; t < items; t++)
            {
                body(t);
            }

            return;
        }

        Parallel.For(0, items, new ParallelOptions { MaxDegreeOfParallelism = threads }, body);
    }

    /// <summary>[start, end) of part <paramref name="part"/> when <paramref name="count"/> units are split in <paramref name="parts"/> near-equal contiguous parts.</summary>
    public static (int Start, int End) Split(int count, int parts, int part) =>
        ((int)((long)count * part / parts), (int)((long)count * (part + 1) / parts));
}
