// What a whole-checkpoint quantize or dequantize run did: one row per converted weight (shape,
// dtypes, bytes before and after, mean and max |error|) and totals over every tensor of the
// checkpoint (copied tensors count in the bytes; errors are over converted elements only),
// plus the fixed-width table `peft quantize` / `peft dequantize` print.
using System.Globalization;

namespace PeftKernels.Quantization;

/// <summary>One converted weight.</summary>
/// <param name="Name">The weight key (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>).</param>
/// <param name="Shape">The weight's logical shape.</param>
/// <param name="From">What it was: a safetensors dtype ("BF16") or a 4-bit type ("nf4").</param>
/// <param name="To">What it became.</param>
/// <param name="BytesBefore">Bytes of every tensor that stored it before (all bitsandbytes keys for a 4-bit weight).</param>
/// <param name="BytesAfter">Bytes of every tensor that stores it now.</param>
/// <param name="MeanAbsError">Mean |new − old| in fp32: dequant vs original when quantizing; output dtype vs fp32 dequant when dequantizing.</param>
/// <param name="MaxAbsError">Max |new − old|, as for <paramref name="MeanAbsError"/>.</param>
public sealed record TensorConversion(string Name, IReadOnlyList<long> Shape, string From, string To,
    long BytesBefore, long BytesAfter, double MeanAbsError, double MaxAbsError)
{
    /// <summary>Number of elements: prod(shape).</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>The result of <see cref="ModelQuantizer.Quantize"/> or <see cref="ModelQuantizer.Dequantize"/>.</summary>
public sealed class ConversionReport
{
    internal ConversionReport(string operation, string input, string output, IReadOnlyList<TensorConversion> converted,
        int copiedTensors, long totalBytesBefore, long totalBytesAfter, IReadOnlyList<string> outputFiles)
    {
        Operation = operation;
        Input = input;
        Output = output;
        Converted = converted;
        CopiedTensors = copiedTensors;
        TotalBytesBefore = totalBytesBefore;
        TotalBytesAfter = totalBytesAfter;
        OutputFiles = outputFiles;
        ConvertedElements = converted.Sum(c => c.ElementCount);
        MaxAbsError = converted.Count == 0 ? 0 : converted.Max(c => c.MaxAbsError);
        MeanAbsError = ConvertedElements == 0 ? 0 : converted.Sum(c => c.MeanAbsError * c.ElementCount) / ConvertedElements;
    }

    /// <summary>"quantize" or "dequantize".</summary>
    public string Operation { get; }

    /// <summary>The input file or folder.</summary>
    public string Input { get; }

    /// <summary>The output file or folder.</summary>
    public string Output { get; }

    /// <summary>One row per converted weight, in checkpoint order.</summary>
    public IReadOnlyList<TensorConversion> Converted { get; }

    /// <summary>Input tensors copied unchanged.</summary>
    public int CopiedTensors { get; }

    /// <summary>Bytes of all input tensors (tensor data only, without headers).</summary>
    public long TotalBytesBefore { get; }

    /// <summary>Bytes of all output tensors (tensor data only, without headers).</summary>
    public long TotalBytesAfter { get; }

    /// <summary>TotalBytesAfter / TotalBytesBefore (1 for an empty checkpoint).</summary>
    public double Ratio => TotalBytesBefore == 0 ? 1 : (double)TotalBytesAfter / TotalBytesBefore;

    /// <summary>Elements of all converted weights.</summary>
    public long ConvertedElements { get; }

    /// <summary>Mean |error| over every converted element (0 when nothing was converted).</summary>
    public double MeanAbsError { get; }

    /// <summary>Max |error| over every converted element.</summary>
    public double MaxAbsError { get; }

    /// <summary>The files written (safetensors files, copied files, index), as full paths.</summary>
    public IReadOnlyList<string> OutputFiles { get; }

    /// <summary>Writes the per-tensor table and the totals.</summary>
    public void WriteTable(TextWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        string errorMeaning = Operation == "quantize" ? "dequant vs original" : "output dtype vs fp32 dequant";
        var rows = Converted.Select(c => new[]
        {
            c.Name, Shape(c.Shape), $"{c.From}->{c.To}", Number(c.BytesBefore), Number(c.BytesAfter), Error(c.MeanAbsError), Error(c.MaxAbsError),
        }).ToList();
        string[] header = ["tensor", "shape", "dtype", "bytes before", "bytes after", "mean |err|", "max |err|"];
        int[] widths = [.. header.Select((h, i) => rows.Select(r => r[i].Length).Append(h.Length).Max())];
        writer.WriteLine(Line(header, widths));
        foreach (var row in rows)
        {
            writer.WriteLine(Line(row, widths));
        }

        int total = Converted.Count + CopiedTensors;
        writer.WriteLine(
            $"total: {Converted.Count} of {total} tensors {Operation}d, {CopiedTensors} copied; "
            + $"{Number(TotalBytesBefore)} -> {Number(TotalBytesAfter)} bytes (ratio {Ratio.ToString("F3", CultureInfo.InvariantCulture)})");
        writer.WriteLine(
            $"error ({errorMeaning}) over {Number(ConvertedElements)} elements: mean {Error(MeanAbsError)}, max {Error(MaxAbsError)}");
    }

    private static string Line(string[] cells, int[] widths) =>
        string.Join("  ", cells.Select((c, i) => i < 3 ? c.PadRight(widths[i]) : c.PadLeft(widths[i]))).TrimEnd();

    private static string Shape(IReadOnlyList<long> shape) => $"[{string.Join(", ", shape)}]";

    private static string Number(long value) => value.ToString(CultureInfo.InvariantCulture);

    private static string Error(double value) => value.ToString("0.000e+00", CultureInfo.InvariantCulture);
}
