// A token embedding table W [vocab, dim] (fp32, bf16 or fp16) with optional LoRA adapters
// (PEFT's lora.Embedding): A [r, vocab], B [dim, r], scale s, no dropout. With ids [n]:
//   after[t, :] = A[:, ids[t]]ᵀ                    [n, r]   (a gather of columns of A)
//   y = W[ids, :] + Σ_active s · after · Bᵀ        [n, dim]
// Backward, g = dL/dy: dB = s·gᵀ·after; d_after = s·g·B; dA[:, ids[t]] += d_after[t, :]
// (a scatter-add, so repeated ids accumulate); W gets g scattered into its rows only when
// trainable. Merge: W ← W + s·(B·A)ᵀ = W + s·Aᵀ·Bᵀ.
using System.Numerics.Tensors;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Ops;

namespace PeftKernels.Nn;

/// <summary>A token embedding table [vocab, dim] (fp32 or bf16), with optional LoRA adapters.</summary>
public sealed class Embedding : Module, ILoraLayer
{
    private readonly AdapterSlots slots = new();

    /// <summary>Wraps an existing table.</summary>
    public Embedding(Parameter weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2)
        {
            throw new ArgumentException($"embedding weight must be 2-D [vocab, dim]; got [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        Weight = weight;
    }

    /// <summary>The table [vocab, dim].</summary>
    public Parameter Weight { get; private set; }

    /// <summary>num_embeddings (vocab): the adapter input width.</summary>
    public int InFeatures => Weight.Shape[0];

    /// <summary>embedding_dim: the adapter output width.</summary>
    public int OutFeatures => Weight.Shape[1];

    /// <inheritdoc/>
    public IReadOnlyList<LoraAdapter> Adapters => slots.Lora;

    /// <inheritdoc/>
    public IReadOnlyList<LayerAdapter> AllAdapters => slots.All;

    /// <inheritdoc/>
    public IReadOnlyList<string> ActiveAdapters => slots.Active;

    /// <inheritdoc/>
    public IReadOnlyList<string> MergedAdapters => slots.Merged;

    /// <inheritdoc/>
    public bool AdaptersDisabled { get => slots.Disabled; set => slots.Disabled = value; }

    /// <inheritdoc/>
    public void AddAdapter(LoraAdapter adapter)
    {
        if (adapter?.Bias != null)
        {
            throw new ArgumentException($"embedding adapter '{adapter.Name}' has a lora_B bias; PEFT's embedding LoRA has none.", nameof(adapter));
        }

        if (adapter?.UseDora == true)
        {
            throw new ArgumentException($"embedding adapter '{adapter.Name}' uses DoRA; DoRA is supported on Linear layers only.", nameof(adapter));
        }

        slots.Add(adapter!, InFeatures, OutFeatures, $"Embedding [{InFeatures}, {OutFeatures}]");
    }

    /// <inheritdoc/>
    public bool RemoveAdapter(string name) => slots.Remove(name);

    /// <inheritdoc/>
    public void SetActiveAdapters(params string[] names) => slots.SetActive(names);

    /// <inheritdoc/>
    public void MarkMerged(string name, bool merged) => slots.MarkMerged(name, merged);

    /// <inheritdoc/>
    public void ReplaceWeight(Parameter weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (!weight.Shape.AsSpan().SequenceEqual(Weight.Shape))
        {
            throw new ArgumentException($"replacement embedding weight has shape [{string.Join(", ", weight.Shape)}]; expected [{InFeatures}, {OutFeatures}].", nameof(weight));
        }

        Weight = weight;
    }

    /// <summary>Rows of the table for each id: [ids.Length, dim] (plus the active adapters' updates).</summary>
    public Tensor Forward(ReadOnlySpan<int> ids) => Forward(ids, null);

    /// <summary>Rows of the table for each id plus the adapters' updates (per-row adapters when the context names them).</summary>
    public Tensor Forward(ReadOnlySpan<int> ids, ForwardContext? context)
    {
        var baseRows = Functional.Embedding(ids, Weight);
        var groups = context?.AdapterNames is { } names
            ? slots.Groups(names, ids.Length, $"Embedding [{InFeatures}, {OutFeatures}]").Select(g => (g.Adapter, (int[]?)g.Rows)).ToList()
            : slots.Running().OfType<LoraAdapter>().Select(a => (a, (int[]?)null)).ToList();
        if (groups.Count == 0)
        {
            return baseRows;
        }

        if (baseRows.Device.IsGpu)
        {
            throw new NotSupportedException($"Embedding [{InFeatures}, {OutFeatures}]: LoRA adapters on the embedding run on the cpu device only.");
        }

        int dim = OutFeatures;
        var kernel = context?.Kernel ?? default;
        var savedIds = ids.ToArray();
        var y = baseRows.Data.ToArray();
        var afters = new List<float[]>();
        foreach (var (adapter, rows) in groups)
        {
            int m = rows?.Length ?? savedIds.Length, r = adapter.Rank;
            var after = GatherColumns(adapter.A.Data, savedIds, rows, r, InFeatures);
            var branch = new float[m * dim];
            Gemm.Multiply(false, true, m, dim, r, adapter.Scale, after, adapter.B.Data, 0f, branch, kernel);
            for (int i = 0; i < m; i++)
            {
                var target = y.AsSpan((rows?[i] ?? i) * dim, dim);
                TensorPrimitives.Add(target, branch.AsSpan(i * dim, dim), target);
            }

            afters.Add(after);
        }

        var output = new Tensor(y, baseRows.Shape);
        if (Tape.IsRecording && (baseRows.RequiresGrad || groups.Any(g => g.Item1.A.RequiresGrad || g.Item1.B.RequiresGrad)))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                if (baseRows.RequiresGrad)
                {
                    Grad.Add(baseRows, g);
                }

                for (int e = 0; e < groups.Count; e++)
                {
                    var (adapter, rows) = groups[e];
                    BackwardBranch(g, adapter, rows, savedIds, afters[e], kernel);
                }
            });
        }

        return output;
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters()
    {
        yield return ("weight", Weight);
        foreach (var a in slots.Lora)
        {
            yield return ($"lora_embedding_A.{a.Name}", a.A);
            yield return ($"lora_embedding_B.{a.Name}", a.B);
        }
    }

    private void BackwardBranch(float[] g, LoraAdapter adapter, int[]? rows, int[] ids, float[] after, KernelOptions kernel)
    {
        int m = rows?.Length ?? ids.Length, r = adapter.Rank, dim = OutFeatures, vocab = InFeatures;
        float s = adapter.Scale;
        var gr = new float[m * dim];
        for (int i = 0; i < m; i++)
        {
            g.AsSpan((rows?[i] ?? i) * dim, dim).CopyTo(gr.AsSpan(i * dim, dim));
        }

        if (adapter.B.RequiresGrad)
        {
            var db = GC.AllocateUninitializedArray<float>(dim * r);
            Gemm.Multiply(true, false, dim, r, m, s, gr, after, 0f, db, kernel);
            Grad.AddOwned(adapter.B, db);
        }

        if (adapter.A.RequiresGrad)
        {
            var dAfter = GC.AllocateUninitializedArray<float>(m * r);
            Gemm.Multiply(false, false, m, r, dim, s, gr, adapter.B.Data, 0f, dAfter, kernel);
            var da = new float[r * vocab];
            for (int i = 0; i < m; i++)
            {
                int id = ids[rows?[i] ?? i];
                for (int k = 0; k < r; k++)
                {
                    da[(k * vocab) + id] += dAfter[(i * r) + k];
                }
            }

            Grad.AddOwned(adapter.A, da);
        }
    }

    private static float[] GatherColumns(float[] a, int[] ids, int[]? rows, int r, int vocab)
    {
        int m = rows?.Length ?? ids.Length;
        var after = GC.AllocateUninitializedArray<float>(m * r);
        for (int i = 0; i < m; i++)
        {
            int id = ids[rows?[i] ?? i];
            for (int k = 0; k < r; k++)
            {
                after[(i * r) + k] = a[(k * vocab) + id];
            }
        }

        return after;
    }
}
