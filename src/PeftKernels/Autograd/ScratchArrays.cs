// Exact-length fp32 arrays reused from one training step to the next, for the large temporaries of the
// MixLoRA host path (docs/formats/mixlora.md#cost): the [k·n, ·] gathered rows, SwiGLU's activations and
// their gradients. A tensor's storage must be exactly its element count long, so ArrayPool (power-of-two
// buckets) cannot back one; this pool keeps arrays by exact length.
// Contract: Rent anywhere (a rented array that is never returned is ordinary garbage). Return only an
// array that nothing reads or writes any more: an op returns its own output's storage and gradient at the
// end of its backward, when every node that read them (recorded after it) has already run, and only for
// internal temporaries that no caller holds (see the ops that call Return).
// Why: a fresh 4 MiB large-object array costs ~0.6 ms of page faults against ~0.06 ms to refill a reused
// one, and MixLoRA's step allocated ~20 MiB of them (perf: ~18 % of its samples in the kernel).
// Arrays below the large-object threshold are not pooled (gen 0 allocation is cheap). The pool holds at
// most MaxBytes; beyond that a returned array is dropped to the GC.
namespace PeftKernels.Autograd;

/// <summary>A process-wide pool of exact-length float arrays for large, short-lived autograd temporaries.</summary>
internal static class ScratchArrays
{
    /// <summary>Arrays shorter than this (floats; 85,000 bytes is the large-object threshold) are neither pooled nor kept.</summary>
    internal const int MinLength = 85_000 / sizeof(float);

    /// <summary>The most the pool keeps (bytes): 512 MiB.</summary>
    internal const long MaxBytes = 512L << 20;

    private static readonly Lock Gate = new();
    private static readonly Dictionary<int, Stack<float[]>> Free = [];
    private static long heldBytes;

    /// <summary>Bytes held by the pool now (for tests).</summary>
    internal static long HeldBytes
    {
        get
        {
            lock (Gate)
            {
                return heldBytes;
            }
        }
    }

    /// <summary>An array of exactly <paramref name="length"/> floats, uninitialized (a reused one holds old values).</summary>
    public static float[] Rent(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length >= MinLength)
        {
            lock (Gate)
            {
                if (Free.TryGetValue(length, out var stack) && stack.TryPop(out var reused))
                {
                    heldBytes -= (long)length * sizeof(float);
                    return reused;
                }
            }
        }

        return GC.AllocateUninitializedArray<float>(length);
    }

    /// <summary>Hands <paramref name="array"/> back for reuse (null or a short array: ignored). The caller must not touch it afterwards.</summary>
    public static void Return(float[]? array)
    {
        if (array == null || array.Length < MinLength)
        {
            return;
        }

        long bytes = (long)array.Length * sizeof(float);
        lock (Gate)
        {
            if (heldBytes + bytes > MaxBytes)
            {
                return;
            }

            if (!Free.TryGetValue(array.Length, out var stack))
            {
                Free[array.Length] = stack = new Stack<float[]>();
            }

            // A second return of one array would hand it to two renters; the stacks are short, so look.
            foreach (var held in stack)
            {
                if (ReferenceEquals(held, array))
                {
                    throw new InvalidOperationException("scratch arrays: an array was returned twice (a bug in the op that returns it).");
                }
            }

            stack.Push(array);
            heldBytes += bytes;
        }
    }

    /// <summary>Drops every pooled array (for tests and for callers done training).</summary>
    public static void Clear()
    {
        lock (Gate)
        {
            Free.Clear();
            heldBytes = 0;
        }
    }
}
