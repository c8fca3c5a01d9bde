// y = x·Wᵀ + b + Σ_active s·drop(x)·Aᵀ·Bᵀ. W [out, in] is fp32, bf16, fp16 or 4-bit, handed to
// the kernels as one operand (Weight.AsWeight()). The first active adapter runs through the fused
// kernel (LoraMatmul, any storage) so the base output and its branch are one GEMM; further active adapters, and the
// adapters of a per-row batch (ForwardContext.AdapterNames), are added as separate branches
// (LoraBranch). lora_bias: the fused adapter's s·bias_B rides in the kernel's bias argument.
// Backward (chain rule as in LoraMatmul): dx = g·W (+ dh·A masked by dropout, per branch),
// dA, dB from the kernel or the branch; dW = gᵀ·x only when W itself is trainable; db =
// Σ_rows g when the bias is trainable; dbias_B = s·Σ_rows g.
// DoRA (a LoRA adapter with a magnitude vector) runs as the fused adapter: see Linear.Dora.cs.
// IA³ adapters wrap all of it: feed-forward ones scale the input first (x ⊙ l, the same x the
// LoRA branches see), the others scale the output last ((…) ⊙ l), through Functional.ScaleColumns
// (the Ia3 kernel); several active IA³ vectors multiply, as in PEFT.
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

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

    /// <summary>
    /// y = x·Wᵀ + b + Σ_active s·drop(x)·Aᵀ·Bᵀ for x [.., in] (DoRA: see Linear.Dora.cs), wrapped by the active IA³ scalings;
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

        int[] shape = [.. x.Shape[..^1], OutFeatures];
        if (context.AdapterNames is { } names)
        {
            var groups = slots.Groups(names, x.Rows, $"Linear [{OutFeatures}, {InFeatures}]");
            if (groups.Count == 1 && groups[0].Rows.Length == x.Rows)
            {
                return ForwardLora(x, groups[0].Adapter, [], shape, context);
            }

            return ForwardBase(x, shape, context, [.. groups.Select(g => ((LoraAdapter, int[]?))g)]);
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

        var y = loras.Count == 0 ? ForwardBase(input, shape, context, []) : ForwardLora(input, loras[0], [.. loras.Skip(1).Select(a => (a, (int[]?)null))], shape, context);
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

    private Tensor ForwardBase(Tensor x, int[] shape, ForwardContext context, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras)
    {
        if (x.Device.IsGpu)
        {
            return ForwardOnDevice(x, null, extras, shape, context);
        }

        int n = x.Rows, inF = InFeatures, outF = OutFeatures;
        var w = Weight;
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var k = context.Kernel;
        Gemm.Forward(x.Data, w.AsWeight(), Bias?.Data ?? [], y, n, inF, outF, k);

        var branches = RunBranches(x, y, extras, context);
        var output = new Tensor(y, shape);
        if (Tape.IsRecording && (x.RequiresGrad || w.RequiresGrad || Bias?.RequiresGrad == true || branches.Any(b => b.NeedsGrad)))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                if (x.RequiresGrad)
                {
                    Grad.Accumulate(x, dx => Gemm.Backward(g, w.AsWeight(), dx, n, inF, outF, k));
                }

                BackwardWeightAndBias(g, g, x, n, k);
                BackwardBranches(branches, g, x, k);
            });
        }

        return output;
    }

    private Tensor ForwardLora(Tensor x, LoraAdapter lora, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras, int[] shape, ForwardContext context)
    {
        if (x.Device.IsGpu)
        {
            return ForwardOnDevice(x, lora, extras, shape, context);
        }

        int n = x.Rows, inF = InFeatures, outF = OutFeatures, r = lora.Rank;
        var w = Weight;
        float s = lora.Scale;
        var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed), context.Kernel);
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var h = GC.AllocateUninitializedArray<float>(checked(n * r));
        var dora = lora.UseDora ? DoraForward(x, lora, y, h, n, options) : null;
        if (dora == null)
        {
            FusedForward(x, lora, KernelBias(lora), y, h, n, options);
        }

        var branches = RunBranches(x, y, extras, context);
        var output = new Tensor(y, shape);
        var a = lora.A;
        var b = lora.B;
        if (Tape.IsRecording && (x.RequiresGrad || lora.Parameters.Any(p => p.RequiresGrad) || w.RequiresGrad
            || Bias?.RequiresGrad == true || branches.Any(br => br.NeedsGrad)))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;

                // DoRA: the fused kernel's output was scaled by m / norm, so its gradient is g ⊙ (m / norm).
                var gl = dora == null ? g : dora.Backward(g, lora.Magnitude!, n, outF, context.Kernel);
                float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(n * inF) : [];
                float[] da = a.RequiresGrad ? GC.AllocateUninitializedArray<float>(r * inF) : [];
                var db = GC.AllocateUninitializedArray<float>(outF * r);
                if (dx.Length != 0 || da.Length != 0 || b.RequiresGrad)
                {
                    LoraMatmul.Backward(gl, x.Data, h, w.AsWeight(), a.Data, b.Data, s, dx, da, db, n, inF, outF, r, options);

                    Grad.AddOwned(x, dx);
                    Grad.AddOwned(a, da);
                    Grad.AddOwned(b, db);
                }

                if (lora.Bias?.RequiresGrad == true)
                {
                    Grad.AddOwned(lora.Bias, LoraBranch.ScaledColumnSums(g, n, outF, s));
                }

                BackwardWeightAndBias(gl, g, x, n, context.Kernel);
                BackwardBranches(branches, g, x, context.Kernel);
            });
        }

        return output;
    }

    /// <summary>y = x·Wᵀ + bias + s·drop(x)·Aᵀ·Bᵀ and h = drop(x)·Aᵀ through the fused kernel of the weight's storage.</summary>
    private void FusedForward(Tensor x, LoraAdapter lora, float[] bias, float[] y, float[] h, int n, in LoraOptions options)
    {
        int inF = InFeatures, outF = OutFeatures, r = lora.Rank;
        LoraMatmul.Forward(x.Data, Weight.AsWeight(), bias, lora.A.Data, lora.B.Data, lora.Scale, y, h, n, inF, outF, r, options);
    }

    /// <summary>The kernel's bias argument: the base bias, plus s·bias_B when the fused adapter has lora_bias.</summary>
    private float[] KernelBias(LoraAdapter lora)
    {
        if (lora.Bias == null)
        {
            return Bias?.Data ?? [];
        }

        var bias = new float[OutFeatures];
        System.Numerics.Tensors.TensorPrimitives.Multiply(lora.Bias.Data, lora.Scale, bias);
        if (Bias != null)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(bias, Bias.Data, bias);
        }

        return bias;
    }

    private List<LoraBranch> RunBranches(Tensor x, float[] y, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras, ForwardContext context) =>
        [.. extras.Select(e => LoraBranch.Run(x.Data, y, e.Adapter, e.Rows, Training ? e.Adapter.Dropout : 0f,
            ForwardContext.Mix(e.Adapter.Seed, context.DropoutSeed), InFeatures, OutFeatures, context.Kernel))];

    private void BackwardBranches(List<LoraBranch> branches, float[] g, Tensor x, KernelOptions k)
    {
        foreach (var branch in branches)
        {
            branch.Backward(g, x, InFeatures, OutFeatures, k);
        }
    }

    private void CheckBias(Parameter? bias)
    {
        if (bias != null && (bias.Count != OutFeatures || bias.DType != TensorDType.F32))
        {
            throw new ArgumentException($"Linear bias must be fp32 [{OutFeatures}]; got {bias.DType} [{string.Join(", ", bias.Shape)}].", nameof(bias));
        }
    }

    private void AddBias(float[] y, int n)
    {
        if (Bias == null)
        {
            return;
        }

        var bias = Bias.Data;
        for (int i = 0; i < n; i++)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(y.AsSpan(i * OutFeatures, OutFeatures), bias, y.AsSpan(i * OutFeatures, OutFeatures));
        }
    }

    /// <summary>dW += gWᵀ·x (trainable W only) and db += Σ_rows g (trainable bias); gW differs from g under DoRA's scaling.</summary>
    private void BackwardWeightAndBias(float[] gW, float[] g, Tensor x, int n, KernelOptions k)
    {
        if (Weight.RequiresGrad)
        {
            var dw = Weight.GradOrCreate();
            Gemm.Multiply(true, false, OutFeatures, InFeatures, n, 1f, gW, x.Data, 1f, dw, k);
        }

        if (Bias?.RequiresGrad == true)
        {
            Grad.AddColumnSums(Bias, g, n, OutFeatures);
        }
    }
}
