// `dotnet pack` of the solution, as a user would install it: the libraries come out as NuGet
// packages (assembly, XML docs, README, description, dependencies on each other) and the CLI as
// a .NET tool package that `dotnet tool install` turns into a working `peft` command. Packs the
// already-built binaries (--no-build) of the configuration the tests run in, into a temp folder,
// and installs the tool from that folder alone (a nuget.config that clears every other source).
using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;
using Xunit;

namespace PeftKernels.Tests;

public sealed class PackageTests
{
    private static readonly string[] Libraries = ["PeftKernels", "PeftKernels.Kernels.Core", "PeftKernels.Kernels.Native", "PeftKernels.Kernels.Cpu", "PeftKernels.Kernels.Gpu", "PeftKernels.Server"];

    /// <summary>The project references each library package must carry as package dependencies.</summary>
    private static readonly Dictionary<string, string[]> OwnDependencies = new()
    {
        ["PeftKernels"] = ["PeftKernels.Kernels.Cpu", "PeftKernels.Kernels.Gpu"],
        ["PeftKernels.Kernels.Core"] = [],
        ["PeftKernels.Kernels.Native"] = [],
        ["PeftKernels.Kernels.Cpu"] = ["PeftKernels.Kernels.Core", "PeftKernels.Kernels.Native"],
        ["PeftKernels.Kernels.Gpu"] = ["PeftKernels.Kernels.Core", "PeftKernels.Kernels.Cpu"],
        ["PeftKernels.Server"] = ["PeftKernels"],
    };

    [Fact]
    public void PackProducesLibraryPackagesAndAnInstallablePeftTool()
    {
        using var temp = new TempFolder();
        string packages = temp.File("packages");
        string root = RepositoryRoot();
        string configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
        var (code, output) = Dotnet(root, "pack", Path.Combine(root, "PeftKernels.sln"), "-c", configuration, "--no-build", "-o", packages);
        Assert.True(code == 0, $"dotnet pack failed ({code}):\n{output}");

        string version = typeof(Peft.PeftModel).Assembly.GetName().Version!.ToString(3);
        string[] expected = [.. Libraries.Select(l => $"{l}.{version}.nupkg"), $"PeftKernels.Tool.{version}.nupkg"];
        Assert.Equal(expected.Order(StringComparer.Ordinal), Directory.GetFiles(packages).Select(Path.GetFileName).Order(StringComparer.Ordinal));

        foreach (string library in Libraries)
        {
            using var zip = ZipFile.OpenRead(Path.Combine(packages, $"{library}.{version}.nupkg"));
            string[] entries = [.. zip.Entries.Select(e => e.FullName)];
            Assert.Contains($"lib/net10.0/{library}.dll", entries);
            Assert.Contains($"lib/net10.0/{library}.xml", entries);
            Assert.Contains("README.md", entries);
            var metadata = Nuspec(zip).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
            Assert.Equal(library, Field(metadata, "id"));
            Assert.Equal("README.md", Field(metadata, "readme"));
            Assert.True(Field(metadata, "description").Length > 40, $"{library}: the description is missing or too short");
            var dependencies = metadata.Descendants().Where(e => e.Name.LocalName == "dependency").ToList();
            Assert.Equal(OwnDependencies[library], dependencies.Select(e => (string)e.Attribute("id")!).Where(id => id.StartsWith("PeftKernels", StringComparison.Ordinal)).Order(StringComparer.Ordinal));
            Assert.All(dependencies.Where(e => ((string)e.Attribute("id")!).StartsWith("PeftKernels", StringComparison.Ordinal)), e => Assert.Equal(version, (string)e.Attribute("version")!));
        }

        using (var tool = ZipFile.OpenRead(Path.Combine(packages, $"PeftKernels.Tool.{version}.nupkg")))
        {
            var settings = tool.Entries.Single(e => e.FullName.EndsWith("/DotnetToolSettings.xml", StringComparison.Ordinal));
            using var stream = settings.Open();
            var command = XDocument.Load(stream).Descendants("Command").Single();
            Assert.Equal("peft", (string)command.Attribute("Name")!);
            Assert.Equal("peft.dll", (string)command.Attribute("EntryPoint")!);
        }

        string config = temp.File("nuget.config");
        File.WriteAllText(config, $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="packed" value="{packages}" />
              </packageSources>
            </configuration>
            """);
        string toolPath = temp.File("tool");
        (code, output) = Dotnet(temp.Path, "tool", "install", "PeftKernels.Tool", "--version", version, "--tool-path", toolPath, "--configfile", config);
        Assert.True(code == 0, $"dotnet tool install failed ({code}):\n{output}");

        string peft = Path.Combine(toolPath, OperatingSystem.IsWindows() ? "peft.exe" : "peft");
        (code, output) = Run(peft, temp.Path, "--version");
        Assert.True(code == 0, $"peft --version failed ({code}):\n{output}");
        Assert.StartsWith(version, output.Trim(), StringComparison.Ordinal);
        (code, output) = Run(peft, temp.Path, "adapters", "inspect", temp.Path);
        Assert.Equal(1, code);
        Assert.Contains("is not a PEFT adapter folder", output, StringComparison.Ordinal);
    }

    private static string Field(XElement metadata, string name) => metadata.Elements().Single(e => e.Name.LocalName == name).Value;

    private static XDocument Nuspec(ZipArchive zip)
    {
        using var stream = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open();
        return XDocument.Load(stream);
    }

    private static (int Code, string Output) Dotnet(string workingDirectory, params string[] arguments) =>
        Run(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet", workingDirectory, arguments);

    private static (int Code, string Output) Run(string program, string workingDirectory, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in arguments)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(start)!;
        var error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + error.Result);
    }

    internal static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "PeftKernels.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new DirectoryNotFoundException("repository root (PeftKernels.sln) not found above the test assembly");
    }
}
