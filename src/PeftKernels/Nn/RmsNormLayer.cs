using PeftKernels.Kernels.Cpu;
using PeftKernels.Ops;

namespace PeftKernels.Nn;

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
