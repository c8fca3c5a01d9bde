// The engine's side of the adapter registry: a sequence holds a lease on one adapter version for its
// whole life (so a replaced adapter keeps serving the sequences that started on it), and the
// per-projection table the batched forward reads holds every resident version, rebuilt only when
// the registry's resident set changes; a sequence's slot is its version's index in that table.
namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    private AdapterTable table;
    private long tableVersion = -1;
    private Dictionary<EngineAdapter, int> slots = [];

    private AdapterLease AcquireAdapter(string name) => Adapters.Acquire(name);

    private int SlotOf(IDisposable? lease) => lease is AdapterLease l && slots.TryGetValue(l.Adapter, out int slot) ? slot : -1;

    /// <summary>Rebuilds the table when the registry's resident set changed, and gives every sequence its slot in it.</summary>
    private void RefreshAdapterTable()
    {
        if (Adapters.Changed == tableVersion)
        {
            return;
        }

        var (resident, version) = Adapters.ResidentAdapters();
        slots = resident.Select((a, i) => (a, i)).ToDictionary(p => p.a, p => p.i);
        table = AdapterTable.Build(model.Config.NumHiddenLayers, resident, forward.Shapes);
        tableVersion = version;
        Stats.AdapterTableBuilds++;
        foreach (var s in running.Concat(waiting))
        {
            s.Slot = SlotOf(s.AdapterLease);
        }
    }

    /// <summary>The current adapter table (refreshed) and the slot of <paramref name="name"/>'s resident version, for tests; the lease is kept.</summary>
    internal (AdapterTable Table, int Slot) TableAndSlot(string? name)
    {
        lock (stepGate)
        {
            var lease = name == null ? null : AcquireAdapter(name);
            RefreshAdapterTable();
            return (table, SlotOf(lease));
        }
    }
}
