// OutputPaths.Check, the up-front output check every writing verb shares: an input is never
// the output, never holds it and is never inside it (also through a symbolic link or a
// trailing separator); an existing output needs --overwrite; a file is never taken for a folder
// or the reverse; the nearest existing parent must be a folder.
using PeftKernels.Cli;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The rules of OutputPaths.Check, one case each.</summary>
public sealed class OutputPathsTests : IDisposable
{
    private readonly TempFolder folder = new();

    public OutputPathsTests()
    {
        Input = folder.File("input");
        Directory.CreateDirectory(Input);
        File.WriteAllText(Path.Combine(Input, "config.json"), "{}");
        InputFile = folder.File("in.safetensors");
        File.WriteAllText(InputFile, "x");
    }

    private string Input { get; }

    private string InputFile { get; }

    public void Dispose() => folder.Dispose();

    private string Refused(string path, OutputKind kind, bool overwrite = false, params (string, string?)[] inputs) =>
        Assert.Throws<ArgumentException>(() => OutputPaths.Check("--out", path, kind, overwrite, inputs)).Message;

    [Fact]
    public void ANewPathOrAnEmptyFolderIsAccepted()
    {
        string fresh = Path.Combine(folder.Path, "a", "b");
        Assert.Equal(fresh, OutputPaths.Check("--out", fresh, OutputKind.Folder, false, ("--model", Input)));
        Assert.False(Directory.Exists(Path.Combine(folder.Path, "a")), "the check creates nothing");
        string empty = folder.File("empty");
        Directory.CreateDirectory(empty);
        OutputPaths.Check("--out", empty, OutputKind.Folder, false, ("--model", Input));
        OutputPaths.Check("--out", folder.File("new.safetensors"), OutputKind.File, false, ("input", InputFile));
        Assert.Equal(["empty", "in.safetensors", "input"], folder.Entries());
    }

    [Theory]
    [InlineData("")]
    [InlineData("/")]
    public void TheInputItselfIsRefusedWithOrWithoutATrailingSeparator(string suffix)
    {
        Assert.Contains("is the same path as --model", Refused(Input + suffix, OutputKind.Folder, true, ("--model", Input)));
        Assert.Contains("is the same path as input", Refused(InputFile, OutputKind.File, true, ("input", InputFile)));
    }

    [Fact]
    public void AnOutputInsideAnInputFolderOrHoldingAnInputIsRefused()
    {
        Assert.Contains($"is inside the input folder --adapter {Input}", Refused(Path.Combine(Input, "merged"), OutputKind.Folder, true, ("--model", InputFile), ("--adapter", Input)));
        Assert.Contains("contains the input --model", Refused(folder.Path, OutputKind.Folder, true, ("--model", Input)));
        Assert.Contains("contains the input input", Refused(folder.Path, OutputKind.Folder, true, ("input", InputFile)));
    }

    [Fact]
    public void ASymbolicLinkToAnInputFolderIsThatFolder()
    {
        string link = folder.File("link");
        Directory.CreateSymbolicLink(link, Input);
        Assert.Contains("is the same path as --model", Refused(link, OutputKind.Folder, true, ("--model", Input)));
        Assert.Contains("is inside the input folder", Refused(Path.Combine(link, "out"), OutputKind.Folder, true, ("--model", Input)));
        Assert.Contains("is the same path as --model", Refused(Input, OutputKind.Folder, true, ("--model", link)));
    }

    [Fact]
    public void AnExistingOutputNeedsOverwrite()
    {
        string file = folder.File("old.safetensors"), full = folder.File("full");
        File.WriteAllText(file, "old");
        Directory.CreateDirectory(full);
        File.WriteAllText(Path.Combine(full, "model.safetensors"), "old");
        Assert.Contains("already exists; give --overwrite to replace it", Refused(file, OutputKind.File));
        Assert.Contains("already exists and holds 1 entry; give --overwrite", Refused(full, OutputKind.Folder));
        Assert.Equal(file, OutputPaths.Check("--out", file, OutputKind.File, true));
        Assert.Equal(full, OutputPaths.Check("--out", full, OutputKind.Folder, true));
        Assert.Equal("old", File.ReadAllText(file));
    }

    [Fact]
    public void AFileIsNeverTakenForAFolderNorTheReverse()
    {
        string file = folder.File("file.txt");
        File.WriteAllText(file, "x");
        Assert.Contains("is an existing file; expected a folder", Refused(file, OutputKind.Folder, true));
        Assert.Contains("is an existing folder; expected a file path", Refused(Input, OutputKind.File, true));
        Assert.Contains($"{file} is a file, so no folder can be created below it", Refused(Path.Combine(file, "sub", "out"), OutputKind.Folder));
    }

    [Fact]
    public void AnEmptyPathIsRefused() => Assert.Contains("--out must name a folder; got an empty path", Refused(" ", OutputKind.Folder));
}
