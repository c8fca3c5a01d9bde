// y = x·Wᵀ + b (+ s·drop(x)·Aᵀ·Bᵀ for the active LoRA adapter). W [out, in] is fp32, bf16 or
// 4-bit; with an adapter the fused kernels run (LoraMatmul over fp32/bf16, QLoraMatmul over
// 4-bit) so the base output and the LoRA branch are one GEMM. Backward (chain rule as in
// LoraMatmul): dx = g·W (+ dh·A masked by dropout), dA, dB from the kernel; dW = gᵀ·x only
// when W itself is trainable; db = Σ_rows g when the bias is trainable.
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

/// <summary>A linear layer over a frozen or trainable weight, with optional LoRA adapters.</summary>
public sealed class Linear : Module
{
    private readonly List<LoraAdapter> adapters = [];
    private string[] active = ["default"];

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
        if (bias != null && (bias.Count != OutFeatures || bias.DType != TensorDType.F32))
        {
            throw new ArgumentException($"Linear bias must be fp32 [{OutFeatures}]; got {bias.DType} [{string.Join(", ", bias.Shape)}].", nameof(bias));
        }

        Bias = bias;
    }

    /// <summary>in_features.</summary>
    public int InFeatures { get; }

    /// <summary>out_features.</summary>
    public int OutFeatures { get; }

    /// <summary>The weight [out, in]: fp32, bf16 or 4-bit.</summary>
    public Parameter Weight { get; private set; }

    /// <summary>The bias [out] or null.</summary>
    public Parameter? Bias { get; }

    /// <summary>The LoRA adapters on this layer, in the order they were added.</summary>
    public IReadOnlyList<LoraAdapter> Adapters => adapters;

    /// <summary>Names of the adapters used in forward (those present on this layer).</summary>
    public IReadOnlyList<string> ActiveAdapters => active;

    /// <summary>When true, forward ignores every adapter (PEFT's disable_adapter).</summary>
    public bool AdaptersDisabled { get; set; }

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

    /// <summary>Adds a LoRA adapter; names must be unique on the layer.</summary>
    public void AddAdapter(LoraAdapter adapter)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (adapters.Any(a => a.Name == adapter.Name))
        {
            throw new ArgumentException($"this layer already has an adapter named '{adapter.Name}'.", nameof(adapter));
        }

        if (adapter.A.Shape[1] != InFeatures || adapter.B.Shape[0] != OutFeatures)
        {
            throw new ArgumentException($"adapter '{adapter.Name}' has A [{string.Join(", ", adapter.A.Shape)}] and B [{string.Join(", ", adapter.B.Shape)}]; the layer is [{OutFeatures}, {InFeatures}].", nameof(adapter));
        }

        adapters.Add(adapter);
    }

    /// <summary>Removes the adapter of that name; false when absent.</summary>
    public bool RemoveAdapter(string name) => adapters.RemoveAll(a => a.Name == name) > 0;

    /// <summary>Chooses the adapters used in forward (by name; names absent from this layer are skipped).</summary>
    public void SetActiveAdapters(params string[] names)
    {
        ArgumentNullException.ThrowIfNull(names);
        active = (string[])names.Clone();
    }

    /// <summary>The adapters forward uses now.</summary>
    public IReadOnlyList<LoraAdapter> Active() =>
        AdaptersDisabled ? [] : adapters.Where(a => active.Contains(a.Name)).ToList();

    /// <summary>y = x·Wᵀ + b + Σ_active s·drop(x)·Aᵀ·Bᵀ for x [.., in].</summary>
    public Tensor Forward(Tensor x, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        context ??= ForwardContext.Default;
        if (x.Columns != InFeatures)
        {
            throw new ArgumentException($"Linear [{OutFeatures}, {InFeatures}] got input [{string.Join(", ", x.Shape)}]: last dimension must be {InFeatures}.", nameof(x));
        }

        var on = Active();
        if (on.Count > 1)
        {
            throw new NotSupportedException($"{on.Count} adapters are active on one layer ({string.Join(", ", on.Select(a => a.Name))}); activate one at a time or merge them.");
        }

        int[] shape = [.. x.Shape[..^1], OutFeatures];
        return on.Count == 0 ? ForwardBase(x, shape, context) : ForwardLora(x, on[0], shape, context);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters()
    {
        yield return ("weight", Weight);
        if (Bias != null)
        {
            yield return ("bias", Bias);
        }

        foreach (var a in adapters)
        {
            yield return ($"lora_A.{a.Name}.weight", a.A);
            yield return ($"lora_B.{a.Name}.weight", a.B);
        }
    }

    private Tensor ForwardBase(Tensor x, int[] shape, ForwardContext context)
    {
        int n = x.Rows, inF = InFeatures, outF = OutFeatures;
        var w = Weight;
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var k = context.Kernel;
        switch (w.DType)
        {
            case TensorDType.F32:
                Gemm.Multiply(false, true, n, outF, inF, 1f, x.Data, w.Data, 0f, y, k);
                AddBias(y, n);
                break;
            case TensorDType.BF16:
                Gemm.Multiply(false, true, n, outF, inF, 1f, x.Data, w.Bf16Bits, 0f, y, k);
                AddBias(y, n);
                break;
            default:
                Quant4Matmul.Forward(x.Data, w.Quantized, Bias?.Data ?? [], y, n, inF, outF, k);
                break;
        }

        var output = new Tensor(y, shape);
        if (Tape.IsRecording && (x.RequiresGrad || w.RequiresGrad || Bias?.RequiresGrad == true))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                if (x.RequiresGrad)
                {
                    Grad.Accumulate(x, dx =>
                    {
                        switch (w.DType)
                        {
                            case TensorDType.F32:
                                Gemm.Multiply(false, false, n, inF, outF, 1f, g, w.Data, 0f, dx, k);
                                break;
                            case TensorDType.BF16:
                                Gemm.Multiply(false, false, n, inF, outF, 1f, g, w.Bf16Bits, 0f, dx, k);
                                break;
                            default:
                                Quant4Matmul.Backward(g, w.Quantized, dx, n, inF, outF, k);
                                break;
                        }
                    });
                }

                BackwardWeightAndBias(g, x, n, k);
            });
        }

        return output;
    }

    private Tensor ForwardLora(Tensor x, LoraAdapter lora, int[] shape, ForwardContext context)
    {
        int n = x.Rows, inF = InFeatures, outF = OutFeatures, r = lora.Rank;
        var w = Weight;
        float s = lora.Scale;
        var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed), context.Kernel);
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var h = GC.AllocateUninitializedArray<float>(checked(n * r));
        var bias = Bias?.Data ?? [];
        switch (w.DType)
        {
            case TensorDType.F32:
                LoraMatmul.Forward(x.Data, w.Data, bias, lora.A.Data, lora.B.Data, s, y, h, n, inF, outF, r, options);
                break;
            case TensorDType.BF16:
                LoraMatmul.Forward(x.Data, w.Bf16Bits, bias, lora.A.Data, lora.B.Data, s, y, h, n, inF, outF, r, options);
                break;
            default:
                QLoraMatmul.Forward(x.Data, w.Quantized, bias, lora.A.Data, lora.B.Data, s, y, h, n, inF, outF, r, options);
                break;
        }

        var output = new Tensor(y, shape);
        var a = lora.A;
        var b = lora.B;
        if (Tape.IsRecording && (x.RequiresGrad || a.RequiresGrad || b.RequiresGrad || w.RequiresGrad || Bias?.RequiresGrad == true))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(n * inF) : [];
                float[] da = a.RequiresGrad ? GC.AllocateUninitializedArray<float>(r * inF) : [];
                var db = GC.AllocateUninitializedArray<float>(outF * r);
                if (dx.Length != 0 || da.Length != 0 || b.RequiresGrad)
                {
                    switch (w.DType)
                    {
                        case TensorDType.F32:
                            LoraMatmul.Backward(g, x.Data, h, w.Data, a.Data, b.Data, s, dx, da, db, n, inF, outF, r, options);
                            break;
                        case TensorDType.BF16:
                            LoraMatmul.Backward(g, x.Data, h, w.Bf16Bits, a.Data, b.Data, s, dx, da, db, n, inF, outF, r, options);
                            break;
                        default:
                            QLoraMatmul.Backward(g, x.Data, h, w.Quantized, a.Data, b.Data, s, dx, da, db, n, inF, outF, r, options);
                            break;
                    }

                    Grad.AddOwned(x, dx);
                    Grad.AddOwned(a, da);
                    Grad.AddOwned(b, db);
                }

                BackwardWeightAndBias(g, x, n, context.Kernel);
            });
        }

        return output;
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

    private void BackwardWeightAndBias(float[] g, Tensor x, int n, KernelOptions k)
    {
        if (Weight.RequiresGrad)
        {
            var dw = Weight.GradOrCreate();
            Gemm.Multiply(true, false, OutFeatures, InFeatures, n, 1f, g, x.Data, 1f, dw, k);
        }

        if (Bias?.RequiresGrad == true)
        {
            Grad.AddColumnSums(Bias, g, n, OutFeatures);
        }
    }
}
