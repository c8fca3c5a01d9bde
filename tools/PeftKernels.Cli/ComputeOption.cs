// `--compute fp32|bf16` of peft train, pretrain, score and generate: the precision of the matrix
// products (KernelOptions.Compute), separate from how the weights are stored. bf16 rounds the GEMM
// operands to bf16 and sums in fp32 (native AVX512-BF16 / AMX kernels where the CPU has them);
// norms, softmax, attention, the loss and the optimizer stay fp32.
using System.CommandLine;

namespace PeftKernels.Cli;

internal static class ComputeOption
{
    internal static Option<string> Create() =>
        new Option<string>("--compute")
        {
            HelpName = "fp32|bf16",
            Description = "Precision of the matrix products: fp32, or bf16 operands with fp32 sums (norms, softmax, loss and optimizer stay fp32).",
            DefaultValueFactory = _ => "fp32",
        }.AcceptingOnly("fp32", "bf16");

    /// <summary>The precision a parsed `--compute` names.</summary>
    /// <exception cref="ArgumentException">bf16 with a CUDA `--device`: the GPU kernels compute in fp32.</exception>
    internal static ComputePrecision Compute(this ParseResult parse, Option<string> option, Option<string> device)
    {
        if (parse.GetValue(option) != "bf16")
        {
            return ComputePrecision.Fp32;
        }

        if (ModelCommands.ParseDevice(parse.GetRequiredValue(device)).IsGpu)
        {
            throw new ArgumentException("--compute bf16 applies to the CPU kernels; the CUDA kernels compute in fp32 (use --device cpu, or drop --compute).");
        }

        return ComputePrecision.Bf16;
    }

    private static Option<string> AcceptingOnly(this Option<string> option, params string[] values)
    {
        option.AcceptOnlyFromAmong(values);
        return option;
    }
}
