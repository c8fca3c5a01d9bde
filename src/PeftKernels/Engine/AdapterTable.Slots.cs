// The adapter version in a slot of the table (the engine's residual sites look up bottleneck adapters by slot),
// and a projection's shape (the device mirror checks its pools against it).
namespace PeftKernels.Engine;

internal sealed partial class AdapterTable
{
    /// <summary>The adapter version in <paramref name="slot"/>, or null (no adapter, −1, or an empty slot).</summary>
    public EngineAdapter? AdapterAt(int slot) => slot >= 0 && slot < slots.Length ? slots[slot] : null;

    /// <summary>(in, out) of projection <paramref name="p"/>.</summary>
    public (int In, int Out) Shape(int p) => shapes[p];
}
