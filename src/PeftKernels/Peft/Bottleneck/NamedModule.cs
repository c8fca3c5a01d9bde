// A plain container module: named parameters and named children in insertion order, so the
// parameter paths of the bottleneck adapters are AdapterHub's state-dict keys
// (e.g. "adapters.NAME.adapter_down.0.weight"; docs/formats/bottleneck-adapters.md#files).
using PeftKernels.Nn;

namespace PeftKernels.Peft.Bottleneck;

internal sealed class NamedModule : Module
{
    private readonly List<(string Name, Parameter Parameter)> own = [];
    private readonly List<(string Name, Module Module)> children = [];

    public NamedModule Parameter(string name, Parameter p)
    {
        own.Add((name, p));
        return this;
    }

    public NamedModule Child(string name, Module m)
    {
        children.Add((name, m));
        return this;
    }

    public Module? Find(string name) => children.FirstOrDefault(c => c.Name == name).Module;

    public bool Remove(string name) => children.RemoveAll(c => c.Name == name) > 0;

    public IEnumerable<(string Name, Module Module)> Items => children;

    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters() => own;

    protected override IEnumerable<(string Name, Module Module)> Children() => children;
}
