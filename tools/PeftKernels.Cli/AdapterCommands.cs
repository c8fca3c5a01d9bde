// `peft adapters inspect`: prints the config, every tensor (name, dtype, shape), the parameter
// count and the file size of a PEFT adapter folder, and warns (stderr) about non-finite values and
// LoRA shapes that disagree with the config's r or with each other (AdapterChecks.cs).
using System.CommandLine;
using System.Globalization;
using PeftKernels.Autograd;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

internal static class AdapterCommands
{
    public static Command CreateAdapters()
    {
        var command = new Command("adapters", "Work with PEFT adapter folders.");
        var folder = new Argument<string>("dir") { Description = "Adapter folder (adapter_config.json + adapter_model.safetensors)." };
        var inspect = new Command("inspect", "Print an adapter's config, every tensor (name, dtype, shape), its parameter count and file size.") { folder };
        inspect.SetAction(parse => Cli.Guard(parse, log =>
        {
            string dir = parse.GetRequiredValue(folder);
            if (BottleneckInspect.TryPrint(dir, log))
            {
                return 0;
            }

            string configPath = Path.Combine(dir, Lora.ConfigFile), weightsPath = Path.Combine(dir, Lora.WeightsFile);
            if (!File.Exists(configPath) || !File.Exists(weightsPath))
            {
                throw new FileNotFoundException($"{dir} is not a PEFT adapter folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.");
            }

            if (PromptLearningFiles.Recognizes(dir))
            {
                return PromptLearningCommands.Inspect(parse, log, dir);
            }

            if (Peft.XLora.XLoraModel.Recognizes(dir))
            {
                return InspectXLora.Print(parse, log, dir);
            }

            if (MixLoraConfig.IsMixLoraFolder(dir))
            {
                return InspectMixLora.Print(log, dir);
            }

            var config = PeftConfig.Load(configPath);
            using var file = SafeTensorsFile.Open(weightsPath);
            log.WriteLine($"adapter: {Path.GetFullPath(dir)}");
            log.WriteLine(config switch
            {
                Ia3Config ia3 => $"method: IA³ (output scaling of the targets, input scaling of the feed-forward modules {Describe(ia3.EffectiveFeedforward)})",
                LoraConfig { UseDora: true } lora => $"method: DoRA (r = {lora.R}, lora_alpha = {lora.LoraAlpha.ToString(CultureInfo.InvariantCulture)}, magnitude vectors)",
                LoraConfig lora => $"method: LoRA (r = {lora.R}, lora_alpha = {lora.LoraAlpha.ToString(CultureInfo.InvariantCulture)})",
                _ => $"method: {config.PeftType}",
            });
            log.WriteLine($"config ({Lora.ConfigFile}):");
            log.WriteLine(File.ReadAllText(configPath).TrimEnd());
            long parameters = InspectTensors.Print(log, file, metadata: true);

            long size = new FileInfo(weightsPath).Length;
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trainable params: {parameters:N0}"));
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"file size: {size:N0} bytes ({ModelCommands.Mib(size)})"));
            foreach (string warning in AdapterChecks.Warnings(file, config))
            {
                parse.InvocationConfiguration.Error.WriteLine($"warning: {warning}");
            }

            var others = Directory.EnumerateDirectories(dir).Where(d => File.Exists(Path.Combine(d, Lora.ConfigFile))).Select(d => Path.GetFileName(d)).Order(StringComparer.Ordinal).ToList();
            if (others.Count > 0)
            {
                log.WriteLine($"other adapters in subfolders: {string.Join(", ", others)}");
            }

            return 0;
        }));
        command.Subcommands.Add(inspect);
        return command;
    }

    private static string Describe(TargetModules t) => t.Regex ?? $"[{string.Join(", ", t.Names!)}]";
}
