// The README's C# must compile against the library as built: the test extracts every ```csharp block
// under "## Quick start (C#)" and "## Serve adapters over an OpenAI-compatible API" (the OpenAI client
// and the in-process IChatClient examples) and compiles them with Roslyn, as top-level
// programs with the implicit usings of a new console project, against the assemblies this test process loaded (the library, the kernels and the BCL).
using System.Reflection;
using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Xunit;

namespace PeftKernels.Tests;

public partial class ReadmeQuickStartTests
{
    [Theory]
    [InlineData("## Quick start (C#)")]
    [InlineData("## Serve adapters over an OpenAI-compatible API")]
    public void QuickStartCompiles(string heading)
    {
        string readme = File.ReadAllText(FindReadme());
        int start = readme.IndexOf(heading, StringComparison.Ordinal);
        Assert.True(start >= 0, $"README has no '{heading}' section");
        int end = readme.IndexOf("\n## ", start + 5, StringComparison.Ordinal);
        string section = end < 0 ? readme[start..] : readme[start..end];
        var blocks = CSharpBlock().Matches(section).Select(m => m.Groups[1].Value).ToList();
        Assert.NotEmpty(blocks);

        _ = typeof(Models.LlamaForCausalLM).Assembly;
        _ = typeof(Kernels.Cpu.Gemm).Assembly;
        _ = typeof(OpenAI.OpenAIClient).Assembly;
        _ = typeof(System.ClientModel.ApiKeyCredential).Assembly;
        _ = typeof(Microsoft.Extensions.AI.IChatClient).Assembly;
        var references = AppDomain.CurrentDomain.GetAssemblies()
            .Where(a => !a.IsDynamic && a.Location.Length > 0)
            .Select(a => MetadataReference.CreateFromFile(a.Location))
            .Concat(((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator).Select(p => MetadataReference.CreateFromFile(p)))
            .GroupBy(r => Path.GetFileName(r.FilePath)).Select(g => g.First()).ToList();
        for (int i = 0; i < blocks.Count; i++)
        {
            var tree = CSharpSyntaxTree.ParseText(blocks[i], new CSharpParseOptions(LanguageVersion.Latest));
            var compilation = CSharpCompilation.Create($"QuickStart{i}", [tree, ImplicitUsings], references,
                new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable));
            using var stream = new MemoryStream();
            var result = compilation.Emit(stream);
            var errors = result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error).Select(d => d.ToString()).ToList();
            Assert.True(result.Success, $"README quick start block {i + 1} does not compile:\n{string.Join("\n", errors)}");
        }
    }

    /// <summary>The global usings of a default `dotnet new console` project (ImplicitUsings enabled), which the README assumes.</summary>
    private static readonly SyntaxTree ImplicitUsings = CSharpSyntaxTree.ParseText(
        "global using System; global using System.IO; global using System.Collections.Generic; global using System.Linq; " +
        "global using System.Net.Http; global using System.Threading; global using System.Threading.Tasks;",
        new CSharpParseOptions(LanguageVersion.Latest));

    private static string FindReadme()
    {
        var dir = new DirectoryInfo(Path.GetDirectoryName(Assembly.GetExecutingAssembly().Location)!);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "PeftKernels.sln")))
        {
            dir = dir.Parent;
        }

        return Path.Combine(dir?.FullName ?? throw new DirectoryNotFoundException("repository root (PeftKernels.sln) not found above the test assembly"), "README.md");
    }

    [GeneratedRegex("```csharp\\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();
}
