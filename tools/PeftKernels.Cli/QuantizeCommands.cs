// `peft quantize <in> <out>` and `peft dequantize <in> <out>`: whole-checkpoint 4-bit
// conversion of a .safetensors file or a Hugging Face model folder (ModelQuantizer), printing
// the per-tensor table (bytes before/after, mean and max |error|) and totals. The output is
// checked before anything is read (OutputPaths): an existing one is replaced only with
// --overwrite (a folder output then keeps no model file of the old one that the new one does
// not write), and a folder output is never the input folder, inside it, or a folder holding it.
using System.CommandLine;
using PeftKernels.Quantization;

namespace PeftKernels.Cli;

internal static class QuantizeCommands
{
    private const string InputHelp =
        "A .safetensors file, or a model folder holding model.safetensors or model.safetensors.index.json and its shards.";

    private const string OutputHelp =
        "The output .safetensors file (for a file input) or folder (for a folder input): new (or an empty folder) unless --overwrite, outside the input.";

    public static Command CreateQuantize()
    {
        var input = new Argument<string>("input") { Description = InputHelp };
        var output = new Argument<string>("output") { Description = OutputHelp };
        var type = new Option<string>("--type") { Description = "4-bit data type.", DefaultValueFactory = _ => "nf4" };
        type.AcceptOnlyFromAmong("nf4", "fp4");
        var blocksize = new Option<int>("--blocksize") { HelpName = "n", Description = "Elements per absmax block: a power of two in 32..4096.", DefaultValueFactory = _ => 64 };
        var doubleQuant = new Option<bool>("--double-quant") { Description = "Quantize the absmax scales again with 8 bits (bitsandbytes' compress_statistics)." };
        var include = new Option<string?>("--include")
        {
            HelpName = "regex",
            Description = "Quantize only 2-D float *.weight tensors whose name matches this regex (replaces the default exclusion of embed/lm_head/norm).",
        };
        var exclude = new Option<string?>("--exclude") { HelpName = "regex", Description = "Never quantize tensors whose name matches this regex." };
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command(
            "quantize",
            "Quantize the 2-D float *.weight tensors of a checkpoint to bitsandbytes 4-bit (NF4/FP4) keys; by default all but embeddings, lm_head and norms.")
        {
            input,
            output,
            type,
            blocksize,
            doubleQuant,
            include,
            exclude,
            overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var options = new QuantizeOptions
            {
                Type = QuantizeOptions.ParseType(parse.GetRequiredValue(type)),
                Blocksize = parse.GetValue(blocksize),
                DoubleQuant = parse.GetValue(doubleQuant),
                Include = parse.GetValue(include),
                Exclude = parse.GetValue(exclude),
            };
            CheckOutput(parse.GetRequiredValue(input), parse.GetRequiredValue(output), parse.GetValue(overwrite));
            ModelQuantizer.Quantize(parse.GetRequiredValue(input), parse.GetRequiredValue(output), options, log);
            return 0;
        }));
        return command;
    }

    public static Command CreateDequantize()
    {
        var input = new Argument<string>("input") { Description = InputHelp };
        var output = new Argument<string>("output") { Description = OutputHelp };
        var dtype = new Option<string>("--dtype") { Description = "Element type of the restored weights.", DefaultValueFactory = _ => "f32" };
        dtype.AcceptOnlyFromAmong("f32", "bf16", "f16");
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command("dequantize", "Replace every bitsandbytes 4-bit weight of a checkpoint by a plain tensor with its original name and shape.")
        {
            input,
            output,
            dtype,
            overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var options = new DequantizeOptions { DType = DequantizeOptions.ParseDType(parse.GetRequiredValue(dtype)) };
            CheckOutput(parse.GetRequiredValue(input), parse.GetRequiredValue(output), parse.GetValue(overwrite));
            ModelQuantizer.Dequantize(parse.GetRequiredValue(input), parse.GetRequiredValue(output), options, log);
            return 0;
        }));
        return command;
    }

    /// <summary>The output check of both verbs: a file for a file input, a folder for a folder input (a missing input is the library's error).</summary>
    private static void CheckOutput(string input, string output, bool overwrite)
    {
        if (File.Exists(input) || Directory.Exists(input))
        {
            OutputPaths.Check("output", output, File.Exists(input) ? OutputKind.File : OutputKind.Folder, overwrite, ("input", input));
        }
    }
}
