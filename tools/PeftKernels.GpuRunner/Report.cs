// The runner's results: device facts, kernel checks (max abs / rel error against the CPU kernels,
// with the tolerance that decides pass/fail) and benchmarks (median time, throughput, ratios),
// written as results.json and results.md (files written to a temporary name, then renamed). The
// benchmark rows (BenchResult) come from the bodies in bench/PeftKernels.Bench.Gpu.
using System.Globalization;
using System.Text;
using System.Text.Json;
using PeftKernels.Bench.Gpu;

namespace PeftKernels.GpuRunner;

internal sealed record CheckResult(string Kernel, string Shape, double MaxAbs, double MaxRel, double Atol, double Rtol, bool Pass, string Note);

internal sealed class Report(string device, int runs) : IBenchReport
{
    public string Device { get; } = device;

    public List<CheckResult> Checks { get; } = [];

    public List<BenchResult> Benchmarks { get; } = [];

    public List<string> Notes { get; } = [];

    public void Add(CheckResult check)
    {
        Checks.Add(check);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"check {(check.Pass ? "PASS" : "FAIL")} {check.Kernel} [{check.Shape}] max abs {check.MaxAbs:G3}, max rel {check.MaxRel:G3} (atol {check.Atol:G3}, rtol {check.Rtol:G3}) {check.Note}"));
    }

    public void Add(BenchResult bench)
    {
        Benchmarks.Add(bench);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bench {bench.Name} [{bench.Shape}] {bench.MedianMs:F3} ms{(bench.Gflops is { } f ? $", {f:F0} GFLOP/s" : "")}{(bench.GBps is { } g ? $", {g:F0} GB/s" : "")} {bench.Comparison}"));
    }

    public void Note(string note)
    {
        Notes.Add(note);
        Console.WriteLine("note: " + note);
    }

    public void Write(string folder)
    {
        Directory.CreateDirectory(folder);
        var json = JsonSerializer.Serialize(new
        {
            date = DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture),
            device = Device,
            runs,
            checks = Checks,
            benchmarks = Benchmarks,
            notes = Notes,
        }, new JsonSerializerOptions { WriteIndented = true });
        WriteAtomically(Path.Combine(folder, "results.json"), json);
        WriteAtomically(Path.Combine(folder, "results.md"), Markdown());
    }

    private string Markdown()
    {
        var md = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        md.AppendLine(inv, $"# GPU run, {DateTime.UtcNow:yyyy-MM-dd}");
        md.AppendLine();
        md.AppendLine(inv, $"Device: {Device}. Benchmarks: median of {runs} samples.");
        md.AppendLine();
        md.AppendLine(inv, $"## Checks (the device above vs the CPU): {Checks.Count(c => c.Pass)} passed, {Checks.Count(c => !c.Pass)} failed");
        md.AppendLine();
        md.AppendLine("| kernel | shape | max abs | max rel | atol | rtol | result |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- | --- |");
        foreach (var c in Checks)
        {
            md.AppendLine(inv, $"| {c.Kernel} | {c.Shape} | {c.MaxAbs:G3} | {c.MaxRel:G3} | {c.Atol:G3} | {c.Rtol:G3} | {(c.Pass ? "pass" : "**FAIL**")} {c.Note} |");
        }

        md.AppendLine();
        md.AppendLine("## Benchmarks");
        md.AppendLine();
        md.AppendLine("| benchmark | shape | median ms | GFLOP/s | GB/s | comparison |");
        md.AppendLine("| --- | --- | --- | --- | --- | --- |");
        foreach (var b in Benchmarks)
        {
            md.AppendLine(inv, $"| {b.Name} | {b.Shape} | {b.MedianMs:F3} | {(b.Gflops is { } f ? f.ToString("F0", inv) : "")} | {(b.GBps is { } g ? g.ToString("F0", inv) : "")} | {b.Comparison} |");
        }

        if (Notes.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Notes");
            md.AppendLine();
            foreach (var n in Notes)
            {
                md.AppendLine("- " + n);
            }
        }

        return md.ToString();
    }

    private static void WriteAtomically(string path, string text)
    {
        string temp = path + ".tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, path, overwrite: true);
    }
}
