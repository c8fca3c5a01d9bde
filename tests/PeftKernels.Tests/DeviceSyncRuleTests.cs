using System.Text.RegularExpressions;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The counting tests trust DeviceSync's counter, so no code in src/ or kernels/ may wait for a device behind its back:
/// ILGPU's Synchronize, CopyToCPU, CopyFromCPU and GetAsArray1D wait for the stream, and Allocate1D (a driver
/// allocation; with an array, a waiting copy) bypasses the pool. Only DeviceSync.cs and DeviceMemoryPool.cs call them.
/// </summary>
public partial class DeviceSyncRuleTests
{
    private static readonly string[] Allowed = ["DeviceSync.cs", "DeviceMemoryPool.cs"];

    [Fact]
    public void OnlyDeviceSyncWaitsAndOnlyThePoolAllocates()
    {
        string root = PackageTests.RepositoryRoot();
        var offenders = new List<string>();
        int scanned = 0;
        foreach (string dir in new[] { "src", "kernels" })
        {
            foreach (string file in Directory.EnumerateFiles(Path.Combine(root, dir), "*.cs", SearchOption.AllDirectories))
            {
                string relative = Path.GetRelativePath(root, file);
                if (relative.Contains("/obj/", StringComparison.Ordinal) || relative.Contains("/bin/", StringComparison.Ordinal))
                {
                    continue;
                }

                scanned++;
                if (Allowed.Contains(Path.GetFileName(file)))
                {
                    continue;
                }

                var lines = File.ReadAllLines(file);
                for (int i = 0; i < lines.Length; i++)
                {
                    string code = lines[i].Split("//")[0];
                    if (Waits().IsMatch(code))
                    {
                        offenders.Add($"{relative}:{i + 1}: {lines[i].Trim()}");
                    }
                }
            }
        }

        Assert.True(scanned > 100, $"only {scanned} files scanned under {root}");
        Assert.True(offenders.Count == 0, "device waits or allocations outside DeviceSync / the pool:\n" + string.Join("\n", offenders));
    }

    [Fact]
    public void TheRuleCatchesEachForbiddenCall()
    {
        foreach (string line in new[] { "accelerator.Synchronize();", "view.CopyToCPU(x);", "v.CopyFromCPU(a);", "b.GetAsArray1D()", "a.Allocate1D<float>(n)" })
        {
            Assert.Matches(Waits(), line);
        }

        Assert.DoesNotMatch(Waits(), "DeviceSync.Wait(accelerator);");
    }

    [GeneratedRegex(@"\.(Synchronize|CopyToCPU|CopyFromCPU|GetAsArray1D|Allocate1D)\b")]
    private static partial Regex Waits();
}
