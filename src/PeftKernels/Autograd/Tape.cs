// Tape-based reverse-mode autograd. Every op that has an input requiring grad (while
// recording is on) appends one node to the thread's tape: its output and a closure that
// reads output.Grad and accumulates into its inputs' Grad. Backward(loss) seeds dloss = 1
// and runs the tape in reverse; each node is dropped right after it runs, so the tensors it
// saved (and intermediate gradients) become garbage as early as possible. Parameters keep
// their accumulated Grad across backward calls (gradient accumulation) until ZeroGrad.
namespace PeftKernels.Autograd;

/// <summary>The thread's record of differentiable ops, and backward over it.</summary>
public static class Tape
{
    [ThreadStatic]
    private static List<Node>? nodes;

    [ThreadStatic]
    private static int noGradDepth;

    /// <summary>
    /// Called on this thread after each node's backward during <see cref="Backward(Tensor, float[])"/> (null = none): the hook of
    /// data-parallel training, which starts reducing a bucket of gradients as soon as backward has written them all.
    /// </summary>
    [ThreadStatic]
    internal static Action? AfterNode;

    /// <summary>False inside a <see cref="NoGrad"/> scope.</summary>
    public static bool IsRecording => noGradDepth == 0;

    /// <summary>Nodes currently recorded on this thread's tape (0 when no tape was ever allocated).</summary>
    public static int Count => nodes?.Count ?? 0;

    /// <summary>True once this thread has allocated a tape.</summary>
    public static bool IsAllocated => nodes != null;

    /// <summary>A scope in which ops record nothing and keep no saved tensors (inference).</summary>
    public static NoGradScope NoGrad()
    {
        noGradDepth++;
        return new NoGradScope();
    }

    /// <summary>True when an op over these inputs must record a node.</summary>
    public static bool ShouldRecord(Tensor a) => noGradDepth == 0 && a.RequiresGrad;

    /// <summary>True when an op over these inputs must record a node.</summary>
    public static bool ShouldRecord(Tensor a, Tensor b) => noGradDepth == 0 && (a.RequiresGrad || b.RequiresGrad);

    /// <summary>Records <paramref name="backward"/> for <paramref name="output"/>, which from now on requires grad.</summary>
    public static void Record(Tensor output, Action backward)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(backward);
        output.RequiresGrad = true;
        (nodes ??= []).Add(new Node(output, backward));
    }

    /// <summary>Backpropagates from a one-element tensor, then clears the tape.</summary>
    public static void Backward(Tensor loss) => Backward(loss, 1f);

    /// <summary>Backpropagates <paramref name="gradient"/>·d(loss) (e.g. 1/accumulation steps), then clears the tape.</summary>
    public static void Backward(Tensor loss, float gradient)
    {
        ArgumentNullException.ThrowIfNull(loss);
        if (loss.Count != 1)
        {
            throw new ArgumentException($"backward needs a scalar loss; got shape [{string.Join(", ", loss.Shape)}].", nameof(loss));
        }

        Backward(loss, [gradient]);
    }

    /// <summary>Backpropagates a given output gradient (torch's y.backward(gradient)) from any tensor, then clears the tape.</summary>
    public static void Backward(Tensor output, float[] gradient)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(gradient);
        var loss = output;
        if (gradient.LongLength != output.Count)
        {
            throw new ArgumentException($"the gradient has {gradient.LongLength} elements; the tensor [{string.Join(", ", output.Shape)}] has {output.Count}.", nameof(gradient));
        }

        if (!loss.RequiresGrad)
        {
            throw new InvalidOperationException("the loss does not depend on any trainable parameter (nothing was recorded; inside a NoGrad scope?).");
        }

        var list = nodes ?? [];
        try
        {
            System.Numerics.Tensors.TensorPrimitives.Add(loss.GradOrCreate(), gradient, loss.GradOrCreate());
            for (int i = list.Count - 1; i >= 0; i--)
            {
                var node = list[i];
                list.RemoveAt(i);
                if (node.Output.HasGrad)
                {
                    node.Backward();
                    if (node.Output is not Parameter)
                    {
                        node.Output.DropGrad();
                    }

                    AfterNode?.Invoke();
                }
            }
        }
        finally
        {
            list.Clear();
        }
    }

    /// <summary>Drops everything recorded on this thread (e.g. after a forward whose loss is not needed).</summary>
    public static void Clear() => nodes?.Clear();

    internal static void EndNoGrad() => noGradDepth--;

    private readonly record struct Node(Tensor Output, Action Backward);
}

/// <summary>Ends a <see cref="Tape.NoGrad"/> scope when disposed.</summary>
public readonly struct NoGradScope : IDisposable
{
    /// <inheritdoc/>
    public void Dispose() => Tape.EndNoGrad();
}
