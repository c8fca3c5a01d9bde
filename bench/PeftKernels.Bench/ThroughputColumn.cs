// Two summary columns, value = work of one operation / median time of one operation:
//   GFLOP/s = IWorkload.Flops / median ns   (flops per ns = 1e9 flops per s)
//   GB/s    = IWorkload.Bytes / median ns   (bytes per ns = 1e9 bytes per s)
// The median (not the mean) is used: it is robust to the outliers of a small, noisy machine.
using System.Collections.Concurrent;
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace PeftKernels.Bench;

/// <summary>A throughput column computed from an <see cref="IWorkload"/> and the median time.</summary>
public sealed class ThroughputColumn : IColumn
{
    /// <summary>Arithmetic throughput, 1e9 floating-point operations per second.</summary>
    public static readonly IColumn GFlops = new ThroughputColumn("GFLOP/s", (w, c) => w.Flops(c),
        "Floating-point operations of one call / median time, in 1e9 per second");

    /// <summary>Memory throughput of the minimum traffic, 1e9 bytes per second.</summary>
    public static readonly IColumn GBs = new ThroughputColumn("GB/s", (w, c) => w.Bytes(c),
        "Minimum bytes moved by one call / median time, in 1e9 bytes per second");

    private static readonly ConcurrentDictionary<Type, IWorkload?> Workloads = new();
    private readonly Func<IWorkload, BenchmarkCase, double> _amount;

    private ThroughputColumn(string name, Func<IWorkload, BenchmarkCase, double> amount, string legend)
    {
        ColumnName = name;
        Legend = legend;
        _amount = amount;
    }

    public string Id => nameof(ThroughputColumn) + "." + ColumnName;

    public string ColumnName { get; }

    public string Legend { get; }

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => ColumnName == "GB/s" ? 1 : 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public bool IsAvailable(Summary summary) => summary.BenchmarksCases.Any(c => WorkloadOf(c) is not null);

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) =>
        GetValue(summary, benchmarkCase, summary.Style);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var workload = WorkloadOf(benchmarkCase);
        double amount = workload is null ? 0 : _amount(workload, benchmarkCase);
        if (amount <= 0)
        {
            return "-";
        }

        double? nanoseconds = summary[benchmarkCase]?.ResultStatistics?.Median;
        if (nanoseconds is not > 0)
        {
            return "NA";
        }

        double perSecond = amount / nanoseconds.Value;
        string format = perSecond >= 100 ? "F0" : perSecond >= 10 ? "F1" : "F2";
        return perSecond.ToString(format, style.CultureInfo ?? CultureInfo.InvariantCulture);
    }

    public override string ToString() => ColumnName;

    private static IWorkload? WorkloadOf(BenchmarkCase benchmarkCase) =>
        Workloads.GetOrAdd(benchmarkCase.Descriptor.Type, static type =>
            typeof(IWorkload).IsAssignableFrom(type) ? (IWorkload?)Activator.CreateInstance(type) : null);
}
