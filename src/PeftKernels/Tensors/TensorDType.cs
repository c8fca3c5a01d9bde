namespace PeftKernels;

/// <summary>How a tensor's elements are stored.</summary>
public enum TensorDType
{
    /// <summary>fp32: activations, gradients and trainable parameters.</summary>
    F32,

    /// <summary>bf16 bit patterns: frozen base weights.</summary>
    BF16,

    /// <summary>IEEE fp16: frozen base weights of F16 checkpoints.</summary>
    F16,

    /// <summary>4-bit NF4/FP4 (a <see cref="Kernels.Cpu.QuantizedWeight"/>): frozen QLoRA base weights.</summary>
    Q4,
}
