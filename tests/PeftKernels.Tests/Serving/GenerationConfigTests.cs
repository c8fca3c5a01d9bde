using PeftKernels.Serving;

namespace PeftKernels.Tests.Serving;

/// <summary>GenerationConfig.EosTokenIds: the union of eos_token_id from generation_config.json and config.json.</summary>
public class GenerationConfigTests
{
    private static IReadOnlyList<int> Ids(TempFolder folder, string? generation, string? config)
    {
        if (generation != null)
        {
            File.WriteAllText(folder.File("generation_config.json"), generation);
        }
        if (config != null)
        {
            File.WriteAllText(folder.File("config.json"), config);
        }
        return GenerationConfig.EosTokenIds(folder.Path);
    }

    [Theory]
    [InlineData("""{"eos_token_id": [128001, 128009]}""", """{"eos_token_id": 128009}""", new[] { 128001, 128009 })]
    [InlineData(null, """{"eos_token_id": 2}""", new[] { 2 })]
    [InlineData("""{"eos_token_id": 2}""", null, new[] { 2 })]
    [InlineData("""{"eos_token_id": [5, 3]}""", """{"eos_token_id": [3, 7]}""", new[] { 5, 3, 7 })]
    [InlineData("""{"eos_token_id": null}""", """{"eos_token_id": [151645, 151643]}""", new[] { 151645, 151643 })]
    [InlineData("""{"do_sample": true}""", """{"vocab_size": 10}""", new int[0])]
    [InlineData(null, null, new int[0])]
    public void UnionInOrderOfFirstAppearance(string? generation, string? config, int[] expected)
    {
        using var folder = new TempFolder();
        Assert.Equal(expected, Ids(folder, generation, config));
    }

    [Theory]
    [InlineData("""{"eos_token_id": "2"}""", "config.json: eos_token_id")]
    [InlineData("""{"eos_token_id": [1, "2"]}""", "config.json: eos_token_id[1]")]
    [InlineData("""{"eos_token_id": -1}""", "config.json: eos_token_id")]
    [InlineData("""{"eos_token_id": 1.5}""", "config.json: eos_token_id")]
    [InlineData("""{"eos_token_id": 99999999999}""", "config.json: eos_token_id")]
    [InlineData("""{"eos_token_id": """, "config.json: not valid JSON")]
    public void WrongTypes_NameTheFileAndField(string config, string message)
    {
        using var folder = new TempFolder();
        var e = Assert.Throws<InvalidDataException>(() => Ids(folder, """{"eos_token_id": 1}""", config));
        Assert.Contains(message, e.Message);
    }
}
