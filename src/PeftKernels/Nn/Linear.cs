// A linear layer y = x·Wᵀ + b over a weight of any storage (fp32, bf16, fp16, 4-bit), with its
// adapters. It composes ops (src/PeftKernels/Ops) and holds the adapter slots; it never looks at
// the weight's storage (the ops take any storage through one weight operand):
//   no LoRA adapter      Functional.Gemm            y = x·Wᵀ + b
//   LoRA / QLoRA / DoRA  Functional.LoraMatmul      the first active adapter fused with the base
//                                                   GEMM (the DoRA one first, one DoRA at a time)
//   further adapters     Functional.LoraBranch      added to y (several active adapters), or per
//                                                   row (ForwardContext.AdapterNames)
//   IA³                  Functional.ScaleColumns    feed-forward vectors scale the input first (the
//                                                   same x the LoRA branches see), the others scale
//                                                   the output last; several active vectors multiply
// Each op runs on the host or on the input's device and records its own backward.
// Equations: docs/formats/methods.md#several-adapters-on-one-layer.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Ops;

namespace PeftKernels.Nn;

/// <summary>A linear layer over a frozen or trainable weight, with optional LoRA adapters.</summary>
public sealed partial class Linear : Module, ILoraLayer
{
    private readonly AdapterSlots slots = new();

    /// <summary>A linear layer over an existing weight [out, in] and optional bias [out].</summary>
    public Linear(Parameter weight, Parameter? bias = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2)
        {
            throw new ArgumentException($"Linear weight must be 2-D [out, in]; got [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        OutFeatures = weight.Shape[0];
        InFeatures = weight.Shape[1];
        Weight = weight;
        CheckBias(bias);
        Bias = bias;
    }

    /// <summary>in_features.</summary>
    public int InFeatures { get; }

    /// <summary>out_features.</summary>
    public int OutFeatures { get; }

    /// <summary>The weight [out, in]: fp32, bf16 or 4-bit.</summary>
    public Parameter Weight { get; private set; }

    /// <summary>The bias [out] or null.</summary>
    public Parameter? Bias { get; private set; }

    /// <summary>The LoRA (and DoRA) adapters on this layer, in the order they were added.</summary>
    public IReadOnlyList<LoraAdapter> Adapters => slots.Lora;

    /// <summary>The IA³ adapters on this layer, in the order they were added.</summary>
    public IReadOnlyList<Ia3Adapter> Ia3Adapters => slots.Ia3;

    /// <inheritdoc/>
    public IReadOnlyList<LayerAdapter> AllAdapters => slots.All;

    /// <summary>Names of the adapters used in forward (those present on this layer).</summary>
    public IReadOnlyList<string> ActiveAdapters => slots.Active;

    /// <inheritdoc/>
    public IReadOnlyList<string> MergedAdapters => slots.Merged;

    /// <summary>When true, forward ignores every adapter (PEFT's disable_adapter).</summary>
    public bool AdaptersDisabled { get => slots.Disabled; set => slots.Disabled = value; }

    /// <summary>Replaces the weight (same shape), e.g. with its 4-bit quantization.</summary>
    public void ReplaceWeight(Parameter weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2 || weight.Shape[0] != OutFeatures || weight.Shape[1] != InFeatures)
        {
            throw new ArgumentException($"replacement weight has shape [{string.Join(", ", weight.Shape)}]; expected [{OutFeatures}, {InFeatures}].", nameof(weight));
        }

        Weight = weight;
    }

    /// <summary>Replaces the bias with another fp32 [out] parameter (a trainable copy, say); only a layer that has a bias can have one put back.</summary>
    public void ReplaceBias(Parameter bias)
    {
        ArgumentNullException.ThrowIfNull(bias);
        if (Bias == null)
        {
            throw new InvalidOperationException($"Linear [{OutFeatures}, {InFeatures}] has no bias to replace.");
        }

        CheckBias(bias);
        Bias = bias;
    }

    /// <summary>Adds a LoRA (or DoRA) adapter; names must be unique on the layer.</summary>
    public void AddAdapter(LoraAdapter adapter) => slots.Add(adapter, InFeatures, OutFeatures, $"Linear [{OutFeatures}, {InFeatures}]");

    /// <summary>Adds an IA³ adapter (l [out, 1], or [1, in] when feed-forward); names must be unique on the layer.</summary>
    public void AddAdapter(Ia3Adapter adapter) => slots.Add(adapter, InFeatures, OutFeatures, $"Linear [{OutFeatures}, {InFeatures}]");

    /// <summary>Removes the adapter of that name; false when absent.</summary>
    public bool RemoveAdapter(string name) => slots.Remove(name);

    /// <summary>Chooses the adapters used in forward (by name; names absent from this layer are skipped).</summary>
    public void SetActiveAdapters(params string[] names) => slots.SetActive(names);

    /// <inheritdoc/>
    public void MarkMerged(string name, bool merged) => slots.MarkMerged(name, merged);

    /// <summary>The LoRA adapters forward adds now (active, not merged; none when disabled).</summary>
    public IReadOnlyList<LoraAdapter> Active() => [.. slots.Running().OfType<LoraAdapter>()];

    /// <summary>DoRA's row norms ‖W + s·B·A‖₂ of this layer's weight (any storage) for one of its LoRA adapters: [out].</summary>
    /// <exception cref="ArgumentException">The adapter's shapes do not fit this layer.</exception>
    public float[] WeightNorms(LoraAdapter adapter, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (adapter.A.Shape[1] != InFeatures || adapter.B.Shape[0] != OutFeatures)
        {
            throw new ArgumentException($"adapter '{adapter.Name}' has A [{string.Join(", ", adapter.A.Shape)}] and B [{string.Join(", ", adapter.B.Shape)}]; "
                + $"Linear [{OutFeatures}, {InFeatures}] needs A [r, {InFeatures}] and B [{OutFeatures}, r].", nameof(adapter));
        }

        return Functional.DoraNorms(Weight, adapter.Factors, options);
    }

    /// <summary>
    /// y = x·Wᵀ + b + Σ_active s·drop(x)·Aᵀ·Bᵀ for x [.., in] (DoRA on the fused adapter), wrapped by the active IA³ scalings;
    /// per-row adapters (plain LoRA only) when the context names them.
    /// </summary>
    /// <exception cref="NotSupportedException">Two DoRA adapters are active at once, or a per-row name is a DoRA or IA³ adapter.</exception>
    public Tensor Forward(Tensor x, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        context ??= ForwardContext.Default;
        if (x.Columns != InFeatures)
        {
            throw new ArgumentException($"Linear [{OutFeatures}, {InFeatures}] got input [{string.Join(", ", x.Shape)}]: last dimension must be {InFeatures}.", nameof(x));
        }

        if (XLora is { } mix)
        {
            return XLoraForward(x, mix, context);
        }

        if (context.AdapterNames is { } names)
        {
            var groups = slots.Groups(names, x.Rows, $"Linear [{OutFeatures}, {InFeatures}]");
            if (groups.Count == 1 && groups[0].Rows.Length == x.Rows)
            {
                return Functional.LoraMatmul(x, Weight, Bias, groups[0].Adapter.Factors, Options(groups[0].Adapter, context));
            }

            var rowsOut = Functional.Gemm(x, Weight, Bias, context.Kernel);
            foreach (var (adapter, rows) in groups)
            {
                rowsOut = Functional.LoraBranch(rowsOut, x, adapter.Factors, rows, Options(adapter, context));
            }

            return rowsOut;
        }

        var on = slots.Running();
        var input = x;
        foreach (var ia3 in on.OfType<Ia3Adapter>().Where(a => a.IsFeedforward))
        {
            input = Functional.ScaleColumns(input, ia3.L, context.Kernel);
        }

        // The fused adapter is the DoRA one when there is one: DoRA scales the base output, other branches are added after.
        var loras = on.OfType<LoraAdapter>().OrderBy(a => a.UseDora ? 0 : 1).ToList();
        if (loras.Count(a => a.UseDora) > 1)
        {
            throw new NotSupportedException($"Linear [{OutFeatures}, {InFeatures}]: DoRA adapters {string.Join(" and ", loras.Where(a => a.UseDora).Select(a => $"'{a.Name}'"))} "
                + "are active together; activate one DoRA adapter at a time.");
        }

        var y = loras.Count == 0 ? Functional.Gemm(input, Weight, Bias, context.Kernel)
            : Functional.LoraMatmul(input, Weight, Bias, loras[0].Factors, Options(loras[0], context));
        foreach (var extra in loras.Skip(1))
        {
            y = Functional.LoraBranch(y, input, extra.Factors, null, Options(extra, context));
        }

        foreach (var ia3 in on.OfType<Ia3Adapter>().Where(a => !a.IsFeedforward))
        {
            y = Functional.ScaleColumns(y, ia3.L, context.Kernel);
        }

        return y;
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters()
    {
        yield return ("weight", Weight);
        if (Bias != null)
        {
            yield return ("bias", Bias);
        }

        foreach (var adapter in slots.All)
        {
            if (adapter is Ia3Adapter ia3)
            {
                yield return ($"ia3_l.{ia3.Name}", ia3.L);
                continue;
            }

            var a = (LoraAdapter)adapter;
            yield return ($"lora_A.{a.Name}.weight", a.A);
            yield return ($"lora_B.{a.Name}.weight", a.B);
            if (a.Bias != null)
            {
                yield return ($"lora_B.{a.Name}.bias", a.Bias);
            }

            if (a.Magnitude != null)
            {
                yield return ($"lora_magnitude_vector.{a.Name}.weight", a.Magnitude);
            }
        }
    }

    /// <summary>This step's dropout of an adapter: its rate while training (0 in evaluation), its seed mixed with the step's.</summary>
    private LoraOptions Options(LoraAdapter adapter, ForwardContext context) =>
        new(Training ? adapter.Dropout : 0f, ForwardContext.Mix(adapter.Seed, context.DropoutSeed), context.Kernel);

    private void CheckBias(Parameter? bias)
    {
        if (bias != null && (bias.Count != OutFeatures || bias.DType != TensorDType.F32))
        {
            throw new ArgumentException($"Linear bias must be fp32 [{OutFeatures}]; got {bias.DType} [{string.Join(", ", bias.Shape)}].", nameof(bias));
        }
    }
}
