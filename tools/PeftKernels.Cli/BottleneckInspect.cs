// `peft adapters inspect` on a bottleneck folder (AdapterHub layout; docs/formats/bottleneck-adapters.md):
// the variant and its settings, the config, every tensor, the parameter count and file size, and for
// a composition the setup and each adapter / fusion sub-folder. Bottleneck adapters do not merge.
using System.Globalization;
using PeftKernels.IO;
using PeftKernels.Peft.Bottleneck;

namespace PeftKernels.Cli;

internal static class BottleneckInspect
{
    /// <summary>Prints <paramref name="dir"/> when it is a bottleneck folder; false otherwise.</summary>
    public static bool TryPrint(string dir, TextWriter log)
    {
        if (!BottleneckAdapters.IsBottleneckFolder(dir))
        {
            return false;
        }

        log.WriteLine($"adapter: {Path.GetFullPath(dir)}");
        string setupPath = Path.Combine(dir, AdapterSetupJson.FileName);
        if (File.Exists(setupPath))
        {
            var setup = AdapterSetupJson.Read(setupPath);
            log.WriteLine($"method: bottleneck composition {setup}");
            log.WriteLine($"setup ({AdapterSetupJson.FileName}):");
            log.WriteLine(File.ReadAllText(setupPath).TrimEnd());
            long total = 0;
            foreach (var name in setup.AdapterNames)
            {
                total += Adapter(Path.Combine(dir, name), log);
            }

            foreach (var fuse in setup.Fusions)
            {
                log.WriteLine($"fusion '{fuse.FusionName}' ({BottleneckAdapters.FusionConfigFileName}):");
                log.WriteLine(File.ReadAllText(Path.Combine(dir, fuse.FusionName, BottleneckAdapters.FusionConfigFileName)).TrimEnd());
                total += Tensors(Path.Combine(dir, fuse.FusionName, BottleneckAdapters.FusionWeightsFileName), log);
            }

            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"parameters (all adapters and fusions): {total:N0}"));
        }
        else
        {
            Adapter(dir, log);
        }

        log.WriteLine("merge: not possible (bottleneck adapters are non-linear in the hidden state; they are served unmerged)");
        return true;
    }

    private static long Adapter(string dir, TextWriter log)
    {
        string configPath = Path.Combine(dir, BottleneckConfigJson.FileName);
        var (config, info) = BottleneckConfigJson.Read(configPath);
        string variant = config.IsParallel ? "parallel (par_bn)" : config.MhAdapter && config.OutputAdapter ? "Houlsby (double_seq_bn)"
            : config.OriginalLnBefore ? "Pfeiffer (seq_bn)" : "sequential";
        string scaling = config.ScalingKind == BottleneckScalingKind.Constant ? config.Scaling.ToString(CultureInfo.InvariantCulture) : config.ScalingKind.ToString().ToLowerInvariant();
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"method: bottleneck adapter '{info.Name}', {variant}: sites {(config.MhAdapter ? "attention + " : "")}{(config.OutputAdapter ? "output" : "")}, m = {config.Width(info.HiddenSize)} (hidden {info.HiddenSize} / reduction_factor {config.ReductionFactor}), {config.NonLinearity}, scaling {scaling}, init {config.InitWeights}"));
        log.WriteLine($"config ({BottleneckConfigJson.FileName}):");
        log.WriteLine(File.ReadAllText(configPath).TrimEnd());
        return Tensors(Path.Combine(dir, BottleneckAdapters.WeightsFileName), log);
    }

    private static long Tensors(string path, TextWriter log)
    {
        using var file = SafeTensorsFile.Open(path);
        long parameters = InspectTensors.Print(log, file);

        long size = new FileInfo(path).Length;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trainable params: {parameters:N0}"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"file size: {size:N0} bytes ({ModelCommands.Mib(size)})"));
        return parameters;
    }
}
