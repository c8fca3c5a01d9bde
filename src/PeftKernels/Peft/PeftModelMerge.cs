// Merging LoRA into the base weights (peft-math.md), per layer carrying the adapter:
//   Linear     W ← W + s·B·A        ([out, r]·[r, in])         b ← b + s·bias_B (lora_bias)
//   Embedding  W ← W + s·(B·A)ᵀ = W + s·Aᵀ·Bᵀ  ([vocab, r]·[r, dim])
// computed in fp32 by the GEMM. Storage: an fp32 weight is updated in place (unmerge subtracts
// again, exact to fp32 rounding); a bf16 weight is widened, merged in fp32 and rounded back; a
// 4-bit weight is dequantized, merged and kept as fp32 or bf16 after its original dtype (no
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
        var plan = new List<(string Module, ILoraLayer Layer, LoraAdapter Adapter)>();
        foreach (string name in names)
        {
            RequireAdapter(name);
            if (merges.Any(m => m.Adapter.Name == name))
            {
                throw new ArgumentException($"adapter '{name}' is already merged.", nameof(adapterNames));
            }

            foreach (var (module, layer) in Layers())
            {
                if (layer.Adapters.FirstOrDefault(a => a.Name == name) is { } adapter)
                {
                    if (adapter.Bias != null && layer is Linear { Bias: null })
                    {
                        throw new InvalidOperationException($"adapter '{name}' has a lora_B bias on '{module}', which has no bias to merge it into.");
                    }

                    plan.Add((module, layer, adapter));
                }
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

            throw;
        }

        foreach (var m in merges.Skip(start))
        {
            m.Exact = null;
        }

        return new MergeReport(report);
    }

    /// <summary>Undoes every merge, last merged first (fp32 weights by subtraction, others by restoring the kept original).</summary>
    public void Unmerge()
    {
        while (merges.Count > 0)
        {
            UnmergeLast();
        }
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
        return Model;
    }

    private void RemoveAll()
    {
        foreach (var (_, layer) in Layers())
        {
            foreach (var a in layer.Adapters.ToList())
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

    private MergedModule MergeOne(string module, ILoraLayer layer, LoraAdapter adapter, bool safe, bool shared)
    {
        var w = layer.Weight;
        long before = w.ByteSize;
        float[]? biasBefore = null;
        var linear = layer as Linear;
        if (adapter.Bias != null)
        {
            var merged = (float[])linear!.Bias!.Data.Clone();
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(adapter.Bias.Data, adapter.Scale, merged, merged);
            CheckFinite(merged, safe, module, adapter.Name, "bias");
            biasBefore = (float[])linear.Bias.Data.Clone();
            merged.CopyTo(linear.Bias.Data, 0);
        }

        if (w.DType == TensorDType.F32 && !shared)
        {
            // Safe: keep the exact original until the whole call succeeds, so a refusal restores it bit for bit.
            var exact = safe ? (float[])w.Data.Clone() : null;
            AddDelta(layer, adapter, w.Data, 1f);
            CheckFinite(w.Data, safe, module, adapter.Name, "weight", () =>
            {
                exact!.CopyTo(w.Data, 0);
                biasBefore?.CopyTo(linear!.Bias!.Data, 0);
            });
            Record(layer, adapter, null, biasBefore).Exact = exact;
            return new MergedModule(module, adapter.Name, TensorDType.F32, TensorDType.F32, 0, 0, w.Count, before, before);
        }

        var values = w.ToFloat32();
        AddDelta(layer, adapter, values, 1f);
        CheckFinite(values, safe, module, adapter.Name, "weight", () => biasBefore?.CopyTo(linear!.Bias!.Data, 0));
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
        else
        {
            replacement = new Parameter(values, [.. w.Shape]);
        }

        layer.ReplaceWeight(replacement);
        Record(layer, adapter, w, biasBefore);
        return new MergedModule(module, adapter.Name, w.DType, replacement.DType, max, values.Length == 0 ? 0 : sum / values.Length, w.Count, before, replacement.ByteSize);
    }

    private MergeRecord Record(ILoraLayer layer, LoraAdapter adapter, Parameter? original, float[]? biasBefore)
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
            AddDelta(m.Layer, m.Adapter, m.Layer.Weight.Data, -1f);
        }

        if (m.BiasBefore != null)
        {
            m.BiasBefore.CopyTo(((Linear)m.Layer).Bias!.Data, 0);
        }

        m.Layer.MarkMerged(m.Adapter.Name, false);
        merges.RemoveAt(merges.Count - 1);
    }

    /// <summary>w += sign·s·ΔW in fp32 (Linear: B·A; Embedding: Aᵀ·Bᵀ).</summary>
    private static void AddDelta(ILoraLayer layer, LoraAdapter adapter, float[] w, float sign)
    {
        int r = adapter.Rank, inF = layer.InFeatures, outF = layer.OutFeatures;
        float alpha = sign * adapter.Scale;
        if (layer is Embedding)
        {
            Gemm.Multiply(true, true, inF, outF, r, alpha, adapter.A.Data, adapter.B.Data, 1f, w);
        }
        else
        {
            Gemm.Multiply(false, false, outF, inF, r, alpha, adapter.B.Data, adapter.A.Data, 1f, w);
        }
    }

    private static void CheckFinite(float[] values, bool safe, string module, string adapter, string what, Action? undo = null)
    {
        if (!safe)
        {
            return;
        }

        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0)
        {
            undo?.Invoke();
            throw new InvalidOperationException($"safe merge of adapter '{adapter}' into '{module}' {what} gives the non-finite value {values[bad]} at element {bad}; nothing was merged.");
        }
    }

    private sealed record MergeRecord(ILoraLayer Layer, LoraAdapter Adapter, Parameter? OriginalWeight, float[]? BiasBefore)
    {
        /// <summary>The exact fp32 weight before a safe merge, held only while that merge call runs.</summary>
        public float[]? Exact { get; set; }
    }
}
