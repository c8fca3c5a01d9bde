// Merging adapters into the base weights (docs/formats/methods.md#merging-and-unmerging), per layer carrying the adapter:
//   LoRA Linear     W ← W + s·B·A        ([out, r]·[r, in])         b ← b + s·bias_B (lora_bias)
//   LoRA Embedding  W ← W + s·(B·A)ᵀ = W + s·Aᵀ·Bᵀ  ([vocab, r]·[r, dim])
//   DoRA            W ← (m / norm)[:, None] ⊙ (W + s·B·A), norm = ‖W + s·B·A‖ row-wise
//   IA³ output      W ← diag(l)·W, b ← b ⊙ l;   IA³ input (feed-forward)  W ← W·diag(l)
// computed in fp32. Storage: an fp32 weight is updated in place (unmerge subtracts LoRA again,
// exact to fp32 rounding, and divides IA³ by l + 1e-8 as PEFT does: inexact, the error is a
// few fp32 roundings, unbounded only for l near 0); a DoRA merge always goes to a new weight
// and unmerge puts the original back (exact), as for every non-fp32 or shared weight. A bias
// changed by a merge is restored exactly. Within one call DoRA adapters merge first, then LoRA,
// then IA³ (the order in which their forward composes), and an IA³ adapter merges only when
// every LoRA adapter still running on its layer merges with it (otherwise the scaling would
// reach that branch after the merge and not before). A bf16 weight is widened, merged in fp32
// and rounded back; a 4-bit weight is dequantized, merged and kept as fp32 or bf16 after its original dtype (no
// re-quantization, so the merged layer computes what the unmerged one did up to that rounding,
// and grows in memory). The original bf16 / 4-bit (or shared, e.g. tied) weight is kept and
// put back on unmerge. Safe merge checks every merged value is finite and, on failure,
// unmerges what this call merged: all or nothing. The report gives, per layer, the largest and
// mean |stored − exact fp32 merge| (the storage rounding merging introduced) and the bytes.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>One layer of a merge: storage before and after and the rounding the stored merge carries.</summary>
/// <param name="Module">Module path.</param>
/// <param name="Adapter">Adapter merged.</param>
/// <param name="BaseDType">Storage of the weight before the merge.</param>
/// <param name="MergedDType">Storage after the merge.</param>
/// <param name="MaxAbsError">Largest |stored − (W + ΔW) in fp32| over the weight.</param>
/// <param name="MeanAbsError">Mean of the same.</param>
/// <param name="Elements">Elements of the weight.</param>
/// <param name="BytesBefore">Weight bytes before.</param>
/// <param name="BytesAfter">Weight bytes after.</param>
public sealed record MergedModule(string Module, string Adapter, TensorDType BaseDType, TensorDType MergedDType, double MaxAbsError, double MeanAbsError,
    long Elements, long BytesBefore, long BytesAfter);

/// <summary>What a merge did, layer by layer.</summary>
/// <param name="Modules">The merged layers in merge order.</param>
public sealed record MergeReport(IReadOnlyList<MergedModule> Modules)
{
    /// <summary>True when some merged layer had a 4-bit base (dequantized by the merge).</summary>
    public bool FromQuantizedBase => Modules.Any(m => m.BaseDType == TensorDType.Q4);

    /// <summary>Largest per-element storage error over all merged layers.</summary>
    public double MaxAbsError => Modules.Count == 0 ? 0 : Modules.Max(m => m.MaxAbsError);

    /// <summary>Mean per-element storage error over all merged layers (each layer weighted by its size).</summary>
    public double MeanAbsError => Modules.Sum(m => m.Elements) == 0 ? 0
        : Modules.Sum(m => m.MeanAbsError * m.Elements) / Modules.Sum(m => m.Elements);
}

public sealed partial class PeftModel
{
    private readonly List<MergeRecord> merges = [];

    /// <summary>
    /// Merges the adapters (default: the active ones not merged yet) into the base weights, in order. With
    /// <paramref name="safe"/>, refuses (and changes nothing) when a merged value is not finite.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown or already merged adapter.</exception>
    /// <exception cref="InvalidOperationException">Inside a disable scope; lora_bias on a layer without bias; non-finite values with <paramref name="safe"/>.</exception>
    public MergeReport Merge(bool safe = false, IReadOnlyList<string>? adapterNames = null)
    {
        if (AdaptersDisabled)
        {
            throw new InvalidOperationException("adapters are disabled; leave the DisableAdapter scope before merging.");
        }

        var names = adapterNames ?? [.. active.Where(a => !merges.Any(m => m.Adapter.Name == a))];
        var plan = new List<(string Module, ILoraLayer Layer, LayerAdapter Adapter)>();
        foreach (string name in names)
        {
            RequireAdapter(name);
            if (merges.Any(m => m.Adapter.Name == name))
            {
                throw new ArgumentException($"adapter '{name}' is already merged.", nameof(adapterNames));
            }

            foreach (var (module, layer) in Layers())
            {
                if (layer.AllAdapters.FirstOrDefault(a => a.Name == name) is { } adapter)
                {
                    if (adapter is LoraAdapter { Bias: not null } && layer is Linear { Bias: null })
                    {
                        throw new InvalidOperationException($"adapter '{name}' has a lora_B bias on '{module}', which has no bias to merge it into.");
                    }

                    plan.Add((module, layer, adapter));
                }
            }
        }

        plan = [.. plan.OrderBy(p => p.Adapter switch { LoraAdapter { UseDora: true } => 0, LoraAdapter => 1, _ => 2 })];
        foreach (var (module, layer, adapter) in plan.Where(p => p.Adapter is Ia3Adapter))
        {
            var running = layer.AllAdapters.OfType<LoraAdapter>()
                .Where(a => layer.ActiveAdapters.Contains(a.Name) && !layer.MergedAdapters.Contains(a.Name) && !plan.Any(p => p.Layer == layer && p.Adapter == a));
            if (running.FirstOrDefault() is { } other)
            {
                throw new InvalidOperationException($"cannot merge IA³ adapter '{adapter.Name}' into '{module}' while LoRA adapter '{other.Name}' runs unmerged on it "
                    + "(its branch is scaled too): merge both in one call, or deactivate it.");
            }
        }

        var shared = Layers().GroupBy(l => l.Layer.Weight, ReferenceEqualityComparer.Instance).Where(g => g.Count() > 1)
            .Select(g => g.Key).ToHashSet(ReferenceEqualityComparer.Instance);
        var report = new List<MergedModule>();
        int start = merges.Count;
        try
        {
            foreach (var (module, layer, adapter) in plan)
            {
                report.Add(MergeOne(module, layer, adapter, safe, shared.Contains(layer.Weight)));
            }
        }
        catch (InvalidOperationException) when (safe)
        {
            while (merges.Count > start)
            {
                UnmergeLast();
            }

            Model.SyncDevice(refresh: true);
            throw;
        }

        foreach (var m in merges.Skip(start))
        {
            m.Exact = null;
        }

        // A model on a GPU device: the merged weights (new tensors, or fp32 changed in place) go there too.
        Model.SyncDevice(refresh: true);
        return new MergeReport(report);
    }

    /// <summary>Undoes every merge, last merged first (fp32 weights by subtraction, others by restoring the kept original).</summary>
    public void Unmerge()
    {
        while (merges.Count > 0)
        {
            UnmergeLast();
        }

        Model.SyncDevice(refresh: true);
    }

    /// <summary>Merges the active adapters, then removes every adapter: the base model with the update built in (PEFT's merge_and_unload).</summary>
    public Module MergeAndUnload(bool safe = false) => MergeAndUnload(out _, safe);

    /// <summary>As <see cref="MergeAndUnload(bool)"/>, also returning the merge report.</summary>
    public Module MergeAndUnload(out MergeReport report, bool safe = false)
    {
        report = Merge(safe);
        merges.Clear();
        foreach (var (_, layer) in Layers())
        {
            foreach (string name in layer.MergedAdapters.ToList())
            {
                layer.MarkMerged(name, false);
            }
        }

        saved.Commit();
        originalBiases.Clear();
        RemoveAll();
        Model.SyncDevice(refresh: true);
        return Model;
    }

    /// <summary>Unmerges, removes every adapter and modules_to_save copy, restores trained base biases: the base model back (PEFT's unload).</summary>
    public Module Unload()
    {
        Unmerge();
        saved.Restore();
        foreach (var (bias, values) in originalBiases)
        {
            values.CopyTo(bias.Data, 0);
        }

        originalBiases.Clear();
        RemoveAll();
        Model.SyncDevice(refresh: true);
        return Model;
    }

    private void RemoveAll()
    {
        foreach (var (_, layer) in Layers())
        {
            foreach (var a in layer.AllAdapters.ToList())
            {
                layer.RemoveAdapter(a.Name);
            }
        }

        configs.Clear();
        active = [];
        disabledDepth = 0;
        Sync();
        Model.Freeze();
    }

    private MergedModule MergeOne(string module, ILoraLayer layer, LayerAdapter adapter, bool safe, bool shared)
    {
        var w = layer.Weight;
        long before = w.ByteSize;
        float[]? biasBefore = null;
        var linear = layer as Linear;
        if (MergedBias(linear, adapter) is { } merged)
        {
            CheckFinite(merged, safe, module, adapter.Name, "bias", merged.Length);
            biasBefore = (float[])linear!.Bias!.Data.Clone();
            merged.CopyTo(linear.Bias.Data, 0);
        }

        if (w.DType == TensorDType.F32 && !shared && adapter is not LoraAdapter { UseDora: true })
        {
            // Safe: keep the exact original until the whole call succeeds, so a refusal restores it bit for bit.
            var exact = safe ? (float[])w.Data.Clone() : null;
            Apply(layer, adapter, w.Data, undo: false);
            CheckFinite(w.Data, safe, module, adapter.Name, "weight", w.Shape[^1], () =>
            {
                exact!.CopyTo(w.Data, 0);
                biasBefore?.CopyTo(linear!.Bias!.Data, 0);
            });
            Record(layer, adapter, null, biasBefore).Exact = exact;
            return new MergedModule(module, adapter.Name, TensorDType.F32, TensorDType.F32, 0, 0, w.Count, before, before);
        }

        var values = w.ToFloat32();
        Apply(layer, adapter, values, undo: false);
        CheckFinite(values, safe, module, adapter.Name, "weight", w.Shape[^1], () => biasBefore?.CopyTo(linear!.Bias!.Data, 0));
        bool toBf16 = w.DType == TensorDType.BF16 || (w.DType == TensorDType.Q4 && w.Quantized.DType == "bfloat16");
        Parameter replacement;
        double max = 0, sum = 0;
        if (toBf16)
        {
            var bits = new ushort[values.Length];
            Bf16.FromSingle(values, bits);
            for (int i = 0; i < bits.Length; i++)
            {
                double e = Math.Abs(Bf16.ToSingle(bits[i]) - (double)values[i]);
                max = Math.Max(max, e);
                sum += e;
            }

            replacement = new Parameter(bits, [.. w.Shape]);
        }
        else if (w.DType == TensorDType.F16 || (w.DType == TensorDType.Q4 && w.Quantized.DType == "float16"))
        {
            var halves = new Half[values.Length];
            System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(values, halves);
            for (int i = 0; i < halves.Length; i++)
            {
                double e = Math.Abs((float)halves[i] - (double)values[i]);
                max = Math.Max(max, e);
                sum += e;
            }

            replacement = new Parameter(halves, [.. w.Shape]);
        }
        else
        {
            replacement = new Parameter(values, [.. w.Shape]);
        }

        layer.ReplaceWeight(replacement);
        Record(layer, adapter, w, biasBefore);
        return new MergedModule(module, adapter.Name, w.DType, replacement.DType, max, values.Length == 0 ? 0 : sum / values.Length, w.Count, before, replacement.ByteSize);
    }

    private MergeRecord Record(ILoraLayer layer, LayerAdapter adapter, Parameter? original, float[]? biasBefore)
    {
        layer.MarkMerged(adapter.Name, true);
        var record = new MergeRecord(layer, adapter, original, biasBefore);
        merges.Add(record);
        return record;
    }

    private void UnmergeLast()
    {
        var m = merges[^1];
        if (m.OriginalWeight != null)
        {
            m.Layer.ReplaceWeight(m.OriginalWeight);
        }
        else if (m.Exact != null)
        {
            m.Exact.CopyTo(m.Layer.Weight.Data, 0);
        }
        else
        {
            Apply(m.Layer, m.Adapter, m.Layer.Weight.Data, undo: true);
        }

        if (m.BiasBefore != null)
        {
            m.BiasBefore.CopyTo(((Linear)m.Layer).Bias!.Data, 0);
        }

        m.Layer.MarkMerged(m.Adapter.Name, false);
        merges.RemoveAt(merges.Count - 1);
    }

    /// <summary>
    /// With <paramref name="safe"/>, refuses merged values that are not all finite, naming the tensor, the count and the
    /// first bad element (index and value, read before <paramref name="undo"/> restores the original).
    /// </summary>
    private static void CheckFinite(float[] values, bool safe, string module, string adapter, string what, int columns, Action? undo = null)
    {
        if (!safe)
        {
            return;
        }

        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0)
        {
            float value = values[bad];
            int count = values.Count(v => !float.IsFinite(v));
            string at = columns > 0 && values.Length > columns ? $"[{bad / columns}, {bad % columns}]" : $"[{bad}]";
            undo?.Invoke();
            throw new InvalidOperationException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"safe merge of adapter '{adapter}' into '{module}.{what}' gives {count} non-finite value(s) of {values.Length}, the first {value} at {at}; nothing was merged."));
        }
    }

    private sealed record MergeRecord(ILoraLayer Layer, LayerAdapter Adapter, Parameter? OriginalWeight, float[]? BiasBefore)
    {
        /// <summary>The exact fp32 weight before a safe merge, held only while that merge call runs.</summary>
        public float[]? Exact { get; set; }
    }
}
