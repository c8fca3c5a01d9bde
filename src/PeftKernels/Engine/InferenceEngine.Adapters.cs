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

    private AdapterLease AcquireAdapter(string name) => Adapters.Acquire(name);

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
