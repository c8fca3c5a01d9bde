// A scope for the device memory of one step, the role TorchSharp's DisposeScope plays for .NET and
// the end of a Python reference plays for PyTorch's caching allocator: every tensor made on a device
// while the scope is open (op outputs, activations saved for backward) hands its memory back to the
// pool when the scope ends, so the next step takes the same blocks again (zero pool misses after
// warm-up). Parameters, their gradients, optimizer moments and KV caches are not op outputs and
// are not scoped.
//   using (var scope = DeviceScope.Begin()) { var loss = model.Loss(...); loss.Item(); Tape.Backward(loss); ... }
// A tensor needed after the scope: read it inside (its host copy stays valid), or scope.Keep(t)
// (it then belongs to the enclosing scope, or to nobody and returns when collected). Reading a
// released tensor's device data throws an error that says so. Scopes nest, per thread.
namespace PeftKernels;

/// <summary>Hands the device memory of the tensors made inside it back to the pool when disposed.</summary>
public sealed class DeviceScope : IDisposable
{
    [ThreadStatic]
    private static DeviceScope? current;
    private readonly DeviceScope? outer;
    private readonly List<Tensor> tensors = [];
    private bool ended;

    private DeviceScope(DeviceScope? outer) => this.outer = outer;

    /// <summary>Tensors registered and not yet released or kept.</summary>
    public int Count => tensors.Count;

    /// <summary>Opens a scope on this thread (nested in the current one, if any).</summary>
    public static DeviceScope Begin() => current = new DeviceScope(current);

    /// <summary>Takes <paramref name="tensor"/> out of this scope: it survives the scope's end (owned by the enclosing scope, if any).</summary>
    /// <returns>The tensor.</returns>
    public Tensor Keep(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensors.Remove(tensor))
        {
            outer?.tensors.Add(tensor);
        }

        return tensor;
    }

    /// <summary>Releases every tensor still registered and closes the scope (scopes must end innermost first).</summary>
    public void Dispose()
    {
        if (ended)
        {
            return;
        }

        if (!ReferenceEquals(current, this))
        {
            throw new InvalidOperationException("DeviceScope: scopes must be disposed innermost first, on the thread that began them.");
        }

        ended = true;
        current = outer;
        foreach (var t in tensors)
        {
            t.ReleaseDevice();
        }

        tensors.Clear();
    }

    /// <summary>Registers a new device-only tensor with the innermost open scope of this thread (nothing when none is open).</summary>
    internal static void Register(Tensor tensor) => current?.tensors.Add(tensor);
}
