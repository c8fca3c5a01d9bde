namespace PeftKernels.Nn;

/// <summary>A node of a model: named parameters and named child modules, as in torch.nn.Module.</summary>
public abstract class Module
{
    /// <summary>Training mode (dropout on) or evaluation mode, for this module and its children.</summary>
    public bool Training { get; private set; }

    /// <summary>Sets training mode on this module and every descendant.</summary>
    public void Train(bool training = true)
    {
        foreach (var (_, m) in NamedModules())
        {
            m.Training = training;
        }
    }

    /// <summary>Every parameter of this module and its descendants, by dotted path (PyTorch state-dict names).</summary>
    /// <remarks>A parameter shared by two modules (tied embeddings) is listed once, under its first name.</remarks>
    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters(string prefix = "") =>
        AllNamedParameters(prefix).DistinctBy(p => p.Parameter, ReferenceEqualityComparer.Instance);

    private IEnumerable<(string Name, Parameter Parameter)> AllNamedParameters(string prefix)
    {
        foreach (var (name, p) in OwnParameters())
        {
            yield return (prefix + name, p);
        }

        foreach (var (name, child) in Children())
        {
            foreach (var item in child.AllNamedParameters(prefix + name + "."))
            {
                yield return item;
            }
        }
    }

    /// <summary>This module (named <paramref name="prefix"/> without its trailing dot) and every descendant, by dotted path.</summary>
    public IEnumerable<(string Name, Module Module)> NamedModules(string prefix = "")
    {
        yield return (prefix.TrimEnd('.'), this);
        foreach (var (name, child) in Children())
        {
            foreach (var item in child.NamedModules(prefix + name + "."))
            {
                yield return item;
            }
        }
    }

    /// <summary>The trainable parameters.</summary>
    public IEnumerable<Parameter> TrainableParameters() => NamedParameters().Select(p => p.Parameter).Where(p => p.Trainable);

    /// <summary>Freezes every parameter (no gradients, no optimizer state).</summary>
    public void Freeze()
    {
        foreach (var (_, p) in NamedParameters())
        {
            p.Trainable = false;
        }
    }

    /// <summary>Clears the gradients of all parameters.</summary>
    public void ZeroGrad()
    {
        foreach (var (_, p) in NamedParameters())
        {
            p.ZeroGrad();
        }
    }

    /// <summary>
    /// Puts every parameter on <paramref name="device"/>: each is uploaded once (bf16 widened to fp32, 4-bit kept packed)
    /// and its host copy stays; moving to the CPU drops the device copies. Parameters changed on the host later (training on
    /// the CPU) need another To(device). Forward then runs on the device of its inputs and parameters.
    /// </summary>
    /// <returns>This module.</returns>
    public Module To(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        foreach (var (_, p) in NamedParameters())
        {
            p.MoveTo(device);
        }

        return this;
    }

    /// <summary>
    /// After host-side changes to a model that lives on a GPU device (adapters added or loaded, weights merged,
    /// replaced or restored): parameters not yet on the model's device are moved there and, with
    /// <paramref name="refresh"/>, fp32 host values changed in place are uploaded again (a parameter whose device copy
    /// is newer, after an optimizer step there, is left alone). No-op for a model on the CPU.
    /// </summary>
    internal void SyncDevice(bool refresh)
    {
        var parameters = NamedParameters().Select(p => p.Parameter).ToList();
        var device = parameters.Select(p => p.Device).FirstOrDefault(d => d.IsGpu);
        if (device == null)
        {
            return;
        }

        foreach (var p in parameters)
        {
            if (!ReferenceEquals(p.Device, device))
            {
                p.MoveTo(device);
            }
            else if (refresh)
            {
                p.RefreshMirror();
            }
        }
    }

    /// <summary>This module's own parameters (not its children's), by local name.</summary>
    protected virtual IEnumerable<(string Name, Parameter Parameter)> OwnParameters() => [];

    /// <summary>Direct children, by local name.</summary>
    protected virtual IEnumerable<(string Name, Module Module)> Children() => [];
}
