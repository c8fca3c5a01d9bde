// Options of whole-checkpoint 4-bit quantization and dequantization (ModelQuantizer), and the
// parsing of the names users type for them ("nf4", "fp4"; "f32", "bf16", "f16"). Every check
// names the option as the `peft` command spells it, so library and CLI report the same error.
using System.Text.RegularExpressions;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Quantization;

/// <summary>What <see cref="ModelQuantizer.Quantize"/> quantizes and how.</summary>
public sealed record QuantizeOptions
{
    /// <summary>NF4 (default) or FP4.</summary>
    public Quant4Type Type { get; init; } = Quant4Type.Nf4;

    /// <summary>Elements per absmax block: a power of two in 32..4096 (default 64).</summary>
    public int Blocksize { get; init; } = 64;

    /// <summary>Quantize the absmax scales again with 8 bits (bitsandbytes' compress_statistics); default off.</summary>
    public bool DoubleQuant { get; init; }

    /// <summary>
    /// When set, only 2-D float <c>.weight</c> tensors whose name matches this regular expression
    /// (anywhere in the name; anchor with ^ and $) are quantized, and the default exclusion of
    /// embeddings, lm_head and norms no longer applies.
    /// </summary>
    public string? Include { get; init; }

    /// <summary>When set, tensors whose name matches this regular expression are never quantized.</summary>
    public string? Exclude { get; init; }

    /// <summary>Threads and SIMD path of the quantization kernels.</summary>
    public KernelOptions Kernel { get; init; }

    /// <summary>Parses "nf4" or "fp4" (case-insensitive).</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    public static Quant4Type ParseType(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.ToLowerInvariant() switch
        {
            "nf4" => Quant4Type.Nf4,
            "fp4" => Quant4Type.Fp4,
            _ => throw new ArgumentException($"option --type: unknown quantization type \"{name}\"; expected nf4 or fp4.", nameof(name)),
        };
    }

    /// <summary>Checks the block size and compiles the filters.</summary>
    internal (Regex? Include, Regex? Exclude) Validate()
    {
        if (!Quant4.IsValidBlocksize(Blocksize))
        {
            throw new ArgumentException($"option --blocksize: {Blocksize} is not a valid block size; expected a power of two in 32..4096.", nameof(Blocksize));
        }

        if (!Enum.IsDefined(Type))
        {
            throw new ArgumentException($"option --type: {(int)Type} is not a quantization type; expected nf4 or fp4.", nameof(Type));
        }

        return (Compile(Include, "--include"), Compile(Exclude, "--exclude"));
    }

    private static Regex? Compile(string? pattern, string option)
    {
        if (pattern == null)
        {
            return null;
        }

        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"option {option}: \"{pattern}\" is not a valid regular expression: {e.Message}", option, e);
        }
    }
}

/// <summary>What <see cref="ModelQuantizer.Dequantize"/> writes.</summary>
public sealed record DequantizeOptions
{
    /// <summary>Element type of the restored weights: F32 (default), BF16 or F16.</summary>
    public SafeTensorDType DType { get; init; } = SafeTensorDType.F32;

    /// <summary>Threads and SIMD path of the dequantization kernels.</summary>
    public KernelOptions Kernel { get; init; }

    /// <summary>Parses "f32", "bf16" or "f16" (case-insensitive; "float32", "bfloat16", "float16" too).</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    public static SafeTensorDType ParseDType(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.ToLowerInvariant() switch
        {
            "f32" or "float32" => SafeTensorDType.F32,
            "bf16" or "bfloat16" => SafeTensorDType.BF16,
            "f16" or "float16" => SafeTensorDType.F16,
            _ => throw new ArgumentException($"option --dtype: unknown dtype \"{name}\"; expected f32, bf16 or f16.", nameof(name)),
        };
    }

    internal void Validate()
    {
        if (DType is not (SafeTensorDType.F32 or SafeTensorDType.BF16 or SafeTensorDType.F16))
        {
            throw new ArgumentException($"option --dtype: {DType} is not a dequantization dtype; expected F32, BF16 or F16.", nameof(DType));
        }
    }
}
