using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

/// <summary>A token embedding table [vocab, dim] (fp32 or bf16).</summary>
public sealed class Embedding : Module
{
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
    public Parameter Weight { get; }

    /// <summary>Rows of the table for each id: [ids.Length, dim].</summary>
    public Tensor Forward(ReadOnlySpan<int> ids) => Functional.Embedding(ids, Weight);

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters() => [("weight", Weight)];
}

/// <summary>RMSNorm with an fp32 weight (HF LlamaRMSNorm).</summary>
public sealed class RmsNormLayer : Module
{
    /// <summary>Wraps an existing fp32 weight [dim].</summary>
    public RmsNormLayer(Parameter weight, float eps)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.DType != TensorDType.F32 || weight.Shape.Length != 1)
        {
            throw new ArgumentException($"RMSNorm weight must be fp32 [dim]; got {weight.DType} [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        Weight = weight;
        Eps = eps;
    }

    /// <summary>The weight [dim].</summary>
    public Parameter Weight { get; }

    /// <summary>The epsilon added to mean(x²).</summary>
    public float Eps { get; }

    /// <summary>RMSNorm over the last dimension.</summary>
    public Tensor Forward(Tensor x, KernelOptions options = default) => Functional.RmsNorm(x, Weight, Eps, options);

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters() => [("weight", Weight)];
}
