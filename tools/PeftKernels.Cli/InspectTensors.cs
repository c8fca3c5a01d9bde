// The tensor table `peft adapters inspect` prints for every adapter layout (PEFT LoRA / DoRA / IA³,
// prompt learning, bottleneck, X-LoRA, MixLoRA): a header line, then one line per tensor (name,
// dtype, shape), names padded to one column.
using PeftKernels.IO;

namespace PeftKernels.Cli;

internal static class InspectTensors
{
    /// <summary>Prints "<paramref name="label"/> (N[; metadata …]):" and one line per tensor; returns the element count.</summary>
    public static long Print(TextWriter log, SafeTensorsFile file, string label = "tensors", bool metadata = false)
    {
        string suffix = "";
        if (metadata)
        {
            string pairs = string.Join(", ", file.Metadata.Select(m => $"{m.Key}={m.Value}"));
            suffix = $"; metadata {(pairs.Length == 0 ? "none" : pairs)}";
        }

        log.WriteLine($"{label} ({file.Names.Count}{suffix}):");
        int width = file.Names.Count == 0 ? 0 : file.Names.Max(n => n.Length);
        long parameters = 0;
        foreach (string name in file.Names)
        {
            var info = file.GetInfo(name);
            parameters += info.ElementCount;
            log.WriteLine($"  {name.PadRight(width)}  {info.DType.HeaderName(),-4}  [{string.Join(", ", info.Shape)}]");
        }

        return parameters;
    }
}
