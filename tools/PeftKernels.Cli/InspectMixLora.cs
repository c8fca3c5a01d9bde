// `peft adapters inspect` of a MixLoRA folder (docs/formats/mixlora.md#files): the method line
// (experts, top-k, rank, routing loss and jitter, which modules carry expert LoRA and which plain
// attention LoRA), the config, every tensor (name, dtype, shape), the layer and expert counts the keys
// show, the parameter count and the file size. A bad config is refused with the field named.
using System.CommandLine;
using System.Globalization;
using PeftKernels.IO;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

internal static class InspectMixLora
{
    /// <summary>Prints the folder's description on <paramref name="log"/>; 0 on success.</summary>
    public static int Print(TextWriter log, string dir)
    {
        string configPath = Path.Combine(dir, MixLoraConfig.ConfigFile), weightsPath = Path.Combine(dir, MixLoraAdapter.WeightsFile);
        var config = MixLoraConfig.Load(configPath);
        using var file = SafeTensorsFile.Open(weightsPath);
        var experts = config.TargetModules.Where(m => m is "gate_proj" or "up_proj" or "down_proj").ToList();
        var attention = config.TargetModules.Except(experts).ToList();
        log.WriteLine($"adapter: {Path.GetFullPath(dir)}");
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"method: MixLoRA ({config.NumExperts} experts, top-{config.TopK} renormalised, r = {config.R}, lora_alpha = {config.LoraAlpha}, "
            + $"router_aux_loss_coef = {config.RouterAuxLossCoef}, jitter_noise = {config.JitterNoise}; expert LoRA on [{string.Join(", ", experts)}], "
            + $"plain LoRA on [{string.Join(", ", attention)}]; does not merge)"));
        log.WriteLine($"config ({MixLoraConfig.ConfigFile}):");
        log.WriteLine(File.ReadAllText(configPath).TrimEnd());
        long parameters = InspectTensors.Print(log, file, metadata: true);
        int layers = file.Names.Count(n => n.EndsWith(".mlp.moe_gate.weight", StringComparison.Ordinal));
        long size = new FileInfo(weightsPath).Length;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"layers with a router: {layers}"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trainable params: {parameters:N0}"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"file size: {size:N0} bytes ({ModelCommands.Mib(size)})"));
        return 0;
    }
}
