// Bottleneck adapters (and compositions) served by the engine (docs/formats/bottleneck-adapters.md#composition):
// a folder is loaded with the library's own loader (BottleneckAdapters.Load: strict checks) onto a twin of
// the serving model that shares its base parameters, so the serving model's layers never see it. The
// EngineAdapter has no projection modules (Kind Bottleneck); its sites live here. In the batched forward,
// before each residual add, every sequence whose adapter is a bottleneck one gets the setup's contribution
// Δ on its own rows (x = the sublayer input, a = its output; BatchForward.Sites.cs), computed by the same
// ops as the library's forward, so a sequence's result equals the model run alone with that adapter.
// A Parallel block (several tasks per input) is refused: a request runs one setup. On a device engine the
// twin shares the device model's parameters, so the loaded adapter's parameters are mirrored there at load
// (BottleneckAdapters' SyncDevice) and the sites run on device tensors (DeviceBatchForward.Sites.cs).
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft.Bottleneck;

namespace PeftKernels.Engine;

/// <summary>The bottleneck sites of one engine adapter version.</summary>
internal sealed class EngineBottleneck
{
    private EngineBottleneck(BottleneckAdapters set, AdapterSetup setup)
    {
        Set = set;
        Setup = setup;
    }

    /// <summary>True once any bottleneck adapter was loaded in this process (the forward's fast path skips the sites otherwise).</summary>
    public static bool AnyLoaded => EngineAdapterState<EngineBottleneck>.AnyLoaded;

    /// <summary>Turns the forward's bottleneck hooks on as if such an adapter had been loaded (tests of the steady state with every hook live).</summary>
    internal static void ArmHooks() => EngineAdapterState<EngineBottleneck>.ArmHooks();

    /// <summary>The adapters, on the twin model.</summary>
    public BottleneckAdapters Set { get; }

    /// <summary>The setup a request with this adapter runs.</summary>
    public AdapterSetup Setup { get; }

    /// <summary>Loads <paramref name="folder"/> (a bottleneck or composition folder) as an engine adapter.</summary>
    /// <exception cref="NotSupportedException">The setup holds a Parallel block.</exception>
    public static EngineAdapter Load(LlamaForCausalLM model, string name, int version, string folder)
    {
        var twin = model.ShareBaseParameters();
        var set = BottleneckAdapters.Load(twin, folder);
        var setup = set.ActiveSetup!;
        if (setup.ParallelChannels > 1)
        {
            throw new NotSupportedException($"adapter '{name}' ({folder}) holds a Parallel block ({setup}); the engine runs one setup per request (send one request per task instead).");
        }

        var bad = set.Parameters.Where(p => p.Data.Any(v => !float.IsFinite(v))).Take(1).ToList();
        if (bad.Count > 0)
        {
            throw new InvalidDataException($"adapter '{name}' ({folder}) holds NaN or infinite values.");
        }

        var adapter = new EngineAdapter(name, version, folder, AdapterKind.Bottleneck, model.Model.Layers.Count, [], EngineAdapter.TwinBytes(model, twin));
        EngineAdapterState<EngineBottleneck>.Register(adapter, new EngineBottleneck(set, setup));
        return adapter;
    }

    /// <summary>The bottleneck sites of <paramref name="adapter"/>, or null for a LoRA / DoRA / IA³ adapter.</summary>
    public static EngineBottleneck? Of(EngineAdapter? adapter) =>
        EngineAdapterState<EngineBottleneck>.Of(adapter, AdapterKind.Bottleneck);

    /// <summary>Δ at layer <paramref name="layer"/>'s site for rows with sublayer input x and output a [rows, hidden] (null: none there).</summary>
    public float[]? Delta(int layer, bool attention, float[] x, float[] a, int rows, KernelOptions kernel)
    {
        int hidden = x.Length / rows;
        using var scope = Tape.NoGrad();
        return Delta(layer, attention, new Tensor(x, rows, hidden), new Tensor(a, rows, hidden), new ForwardContext(0, kernel))?.Data;
    }

    /// <summary>
    /// Δ at that site for rows held in tensors <paramref name="x"/> and <paramref name="a"/> [rows, hidden] (the device engine:
    /// device tensors, so the library's device ops run it); the caller holds Tape.NoGrad. Null: no adapter at that site.
    /// </summary>
    public Tensor? Delta(int layer, bool attention, Tensor x, Tensor a, ForwardContext context) =>
        Set.Sites[(2 * layer) + (attention ? 0 : 1)].Contribution(Setup, x, a, context);
}
