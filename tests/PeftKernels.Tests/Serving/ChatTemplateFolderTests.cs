using PeftKernels.Serving;

namespace PeftKernels.Tests.Serving;

/// <summary>ChatTemplate.FromModelFolder: where the template and the special tokens come from, and the errors for malformed files.</summary>
public class ChatTemplateFolderTests
{
    private static ChatTemplate? FromJson(TempFolder folder, string json)
    {
        File.WriteAllText(folder.File("tokenizer_config.json"), json);
        return ChatTemplate.FromModelFolder(folder.Path);
    }

    [Fact]
    public void NoTemplate_IsNull()
    {
        using var folder = new TempFolder();
        Assert.Null(ChatTemplate.FromModelFolder(folder.Path));
        Assert.Null(FromJson(folder, """{"bos_token": "<s>"}"""));
        Assert.Null(FromJson(folder, """{"chat_template": null}"""));
    }

    [Fact]
    public void TemplateList_TakesTheDefault()
    {
        using var folder = new TempFolder();
        var t = FromJson(folder, """{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}], "eos_token": {"content": "</s>"}}""");
        Assert.Equal("D</s>", t!.Render([], false));
        var e = Assert.Throws<InvalidDataException>(() => FromJson(folder, """{"chat_template": [{"name": "rag", "template": "R"}]}"""));
        Assert.Contains("tokenizer_config.json", e.Message);
        Assert.Contains("chat_template", e.Message);
        Assert.Contains("default", e.Message);
    }

    [Fact]
    public void ChatTemplateJinjaFile_IsTheFallback()
    {
        using var folder = new TempFolder();
        File.WriteAllText(folder.File("chat_template.jinja"), "{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}");
        File.WriteAllText(folder.File("tokenizer_config.json"), """{"eos_token": "<e>"}""");
        var t = ChatTemplate.FromModelFolder(folder.Path);
        Assert.Equal("user:hi\n", t!.Render([new("user", "hi")], false));
        Assert.Equal("<e>", t.EosToken);
    }

    [Theory]
    [InlineData("""{"chat_template": 3}""", "chat_template")]
    [InlineData("""{"chat_template": [{"name": "default"}]}""", "chat_template[0]")]
    [InlineData("""{"chat_template": "x", "bos_token": 1}""", "bos_token")]
    [InlineData("""{"chat_template": "x", "eos_token": {"id": 2}}""", "eos_token")]
    [InlineData("""{"chat_template": "x" """, "not valid JSON")]
    [InlineData("""["chat_template"]""", "expected a JSON object")]
    public void MalformedConfig_NamesTheFileAndField(string json, string field)
    {
        using var folder = new TempFolder();
        var e = Assert.Throws<InvalidDataException>(() => FromJson(folder, json));
        Assert.Contains(folder.File("tokenizer_config.json"), e.Message);
        Assert.Contains(field, e.Message);
    }

    [Fact]
    public void TemplateSyntaxError_NamesTheFileLineAndColumn()
    {
        using var folder = new TempFolder();
        var e = Assert.Throws<ChatTemplateException>(() => FromJson(folder, """{"chat_template": "ok\n{% for m in messages %}{{ m.content }"}"""));
        Assert.Contains("tokenizer_config.json: chat_template", e.Message);
        Assert.Equal(2, e.Line);
        Assert.Contains("line 2", e.Message);
    }
}
