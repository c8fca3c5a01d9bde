// The engine's side of the adapter registry: a sequence holds a lease on one adapter version for its
// whole life (so a replaced adapter keeps serving the sequences that started on it), and the
// per-projection table the batched forward reads holds every resident version, rebuilt only when
// the registry's resident set changes (only the chunks of slots that changed are re-packed); a
// sequence's slot is its version's stable slot in that table.
namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    private readonly AdapterTable table;
    private long tableVersion = -1;

    private AdapterLease AcquireAdapter(string name)
    {
        var lease = Adapters.Acquire(name);
        if (deviceForward != null && RefusedOnDevice(lease.Adapter.Name, lease.Adapter.Kind) is { } reason)
        {
            lease.Dispose();
            throw new NotSupportedException(reason);
        }

        return lease;
    }

    /// <summary>Why the device engine does not serve adapter <paramref name="name"/> of <paramref name="kind"/>, or null when it does (LoRA, DoRA, IA³, prompt learning, bottleneck, MixLoRA).</summary>
    internal string? RefusedOnDevice(string name, AdapterKind kind) => kind switch
    {
        _ => null,
    };

    /// <summary>On a device engine, throws when the current resident version of <paramref name="name"/> is of a kind the device does not serve.</summary>
    private void RefuseResidentOnDevice(string? name)
    {
        if (deviceForward == null || name == null)
        {
            return;
        }

        foreach (var r in Adapters.Snapshot())
        {
            if (r.Current && r.Name == name && RefusedOnDevice(r.Name, r.Kind) is { } reason)
            {
                throw new NotSupportedException(reason);
            }
        }
    }

    private string Refusal(string name, string method, string why) =>
        $"adapter '{name}' is {method}, which the inference engine on {model.Device} does not serve: {why}. "
        + "Serve it with an engine whose model is on the CPU (model.To(Device.Cpu)); LoRA, DoRA, IA³, prompt-learning, bottleneck and MixLoRA adapters run on the device.";

    private int SlotOf(IDisposable? lease) => table.SlotOf((lease as AdapterLease)?.Adapter);

    /// <summary>Rebuilds the table when the registry's resident set changed, and gives every sequence its slot in it.</summary>
    private void RefreshAdapterTable()
    {
        if (Adapters.Changed == tableVersion)
        {
            return;
        }

        var (resident, version) = Adapters.ResidentAdapters();
        table.Sync(resident);
        deviceForward?.SyncAdapters(table);
        tableVersion = version;
        Stats.AdapterTableBuilds++;
        foreach (var s in running.Concat(waiting))
        {
            s.Slot = SlotOf(s.AdapterLease);
        }
    }

    /// <summary>The current adapter table (refreshed) and the slot of <paramref name="name"/>'s current version (loaded if needed), for tests.</summary>
    internal (AdapterTable Table, int Slot) TableAndSlot(string? name)
    {
        lock (stepGate)
        {
            using var lease = name == null ? null : AcquireAdapter(name);
            RefreshAdapterTable();
            return (table, SlotOf(lease));
        }
    }
}
