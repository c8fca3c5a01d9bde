// `peft adapters inspect` on an X-LoRA folder (docs/formats/xlora.md#files-peft-layout): the config, the classifier's tensors,
// its parameter count and file size, then each expert (0/, 1/, …) with its LoRA rank, alpha, targets and size, and the same
// warnings as for a LoRA folder (non-finite values, ranks that disagree with the config).
using System.Globalization;
using PeftKernels.IO;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;

namespace PeftKernels.Cli;

/// <summary>Prints an X-LoRA folder for <c>peft adapters inspect</c>.</summary>
internal static class InspectXLora
{
    public static int Print(System.CommandLine.ParseResult parse, TextWriter log, string dir)
    {
        string configPath = Path.Combine(dir, Lora.ConfigFile), weightsPath = Path.Combine(dir, Lora.WeightsFile);
        var config = XLoraConfig.Load(configPath);
        using var file = SafeTensorsFile.Open(weightsPath);
        log.WriteLine($"adapter: {Path.GetFullPath(dir)}");
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"method: X-LoRA ({config.Experts} LoRA experts, classifier depth {config.XLoraDepth}{(config.XLoraDepth > 1 ? $" × {config.XLoraSize}" : "")}, "
            + $"{(config.LayerwiseScalings ? "layerwise" : "shared")} scalings, softmax temperature {config.SoftmaxTemperature}, top-k {(config.TopKLora?.ToString(CultureInfo.InvariantCulture) ?? "all")}; not mergeable)"));
        log.WriteLine($"config ({Lora.ConfigFile}):");
        log.WriteLine(File.ReadAllText(configPath).TrimEnd());
        long parameters = InspectTensors.Print(log, file, "classifier tensors");

        long size = new FileInfo(weightsPath).Length;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trainable params: {parameters:N0} (the classifier; the experts are frozen)"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"file size: {size:N0} bytes ({ModelCommands.Mib(size)})"));
        var warnings = AdapterChecks.Warnings(file, config);
        foreach (string name in config.ExpertNames)
        {
            string expertDir = Path.Combine(dir, name), expertConfig = Path.Combine(expertDir, Lora.ConfigFile), expertWeights = Path.Combine(expertDir, Lora.WeightsFile);
            if (!File.Exists(expertConfig) || !File.Exists(expertWeights))
            {
                warnings.Add($"expert \"{name}\": {expertDir} is missing or lacks {Lora.ConfigFile} / {Lora.WeightsFile}");
                continue;
            }

            var lora = PeftConfig.Load(expertConfig);
            using var expert = SafeTensorsFile.Open(expertWeights);
            long expertParams = expert.Names.Sum(n => expert.GetInfo(n).ElementCount);
            log.WriteLine(lora is LoraConfig l
                ? string.Create(CultureInfo.InvariantCulture, $"expert \"{name}\": LoRA r = {l.R}, lora_alpha = {l.LoraAlpha}, {expert.Names.Count} tensors, {expertParams:N0} params, {ModelCommands.Mib(new FileInfo(expertWeights).Length)}")
                : $"expert \"{name}\": {lora.PeftType} (X-LoRA needs LoRA experts)");
            warnings.AddRange(AdapterChecks.Warnings(expert, lora).Select(w => $"expert \"{name}\": {w}"));
        }

        foreach (string warning in warnings)
        {
            parse.InvocationConfiguration.Error.WriteLine($"warning: {warning}");
        }

        return 0;
    }
}
