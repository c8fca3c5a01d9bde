using PeftKernels.Serving;

namespace PeftKernels.Tests.Serving;

/// <summary>
/// The chat templates shipped with Llama 2, Llama 3, Mistral, Qwen2, Zephyr, TinyLlama and SmolLM
/// (Serving/Templates/*.tokenizer_config.json, each naming where its text came from), loaded from a model folder
/// and rendered against expected prompts written by hand from each model's documented prompt format.
/// </summary>
public class ChatTemplateTests
{
    private static readonly ChatTurn[] SystemUser = [new("system", "You are a helpful assistant."), new("user", "Hello!")];

    private static readonly ChatTurn[] MultiTurn =
        [new("system", "You are terse."), new("user", "Hi"), new("assistant", "Hello! How can I help?"), new("user", "What is 2+2?")];

    private static readonly ChatTurn[] UserAssistant = [new("user", "Hi"), new("assistant", "Hello!")];

    internal static string TemplatesFolder()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            string folder = Path.Combine(dir.FullName, "tests", "PeftKernels.Tests", "Serving", "Templates");
            if (Directory.Exists(folder))
            {
                return folder;
            }
        }
        throw new DirectoryNotFoundException($"no tests/PeftKernels.Tests/Serving/Templates above {AppContext.BaseDirectory}");
    }

    /// <summary>The model's template, loaded the way the server loads it: its file copied as a model folder's tokenizer_config.json.</summary>
    private static ChatTemplate Load(string model)
    {
        using var folder = new TempFolder();
        File.Copy(Path.Combine(TemplatesFolder(), model + ".tokenizer_config.json"), folder.File("tokenizer_config.json"));
        return ChatTemplate.FromModelFolder(folder.Path) ?? throw new InvalidOperationException("no template loaded");
    }

    [Fact]
    public void Llama2_SystemIsFoldedIntoTheFirstInstruction()
    {
        var t = Load("llama-2-chat");
        Assert.Equal("<s>", t.BosToken);
        Assert.Equal("</s>", t.EosToken);
        const string expected = "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]";
        Assert.Equal(expected, t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal(expected, t.Render(SystemUser, addGenerationPrompt: false));
        Assert.Equal(
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! How can I help? </s><s>[INST] What is 2+2? [/INST]",
            t.Render(MultiTurn, addGenerationPrompt: true));
        Assert.Equal("<s>[INST] Hi [/INST] Hello! </s>", t.Render(UserAssistant, addGenerationPrompt: false));
        Assert.Equal("<s>[INST] padded [/INST]", t.Render([new("user", "  padded \n")], addGenerationPrompt: true));
    }

    [Theory]
    [InlineData("llama-2-chat", "Conversation roles must alternate user/assistant/user/assistant/...")]
    [InlineData("mistral-instruct-v0.1", "Conversation roles must alternate user/assistant/user/assistant/...")]
    [InlineData("mistral-instruct-v0.2", "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...")]
    public void NonAlternatingRoles_AreRejectedWithTheTemplatesOwnMessage(string model, string message)
    {
        var t = Load(model);
        ChatTurn[] twoUsers = [new("user", "a"), new("user", "b")];
        var e = Assert.Throws<ChatTemplateException>(() => t.Render(twoUsers, addGenerationPrompt: true));
        Assert.Equal(message, e.RaisedMessage);
        Assert.Equal(message, e.Message);
        ChatTurn[] assistantFirst = [new("system", "s"), new("assistant", "a")];
        Assert.Equal(message, Assert.Throws<ChatTemplateException>(() => t.Render(assistantFirst, addGenerationPrompt: true)).RaisedMessage);
    }

    [Fact]
    public void Llama3_HeadersTrimmedContentAndGenerationPrompt()
    {
        var t = Load("llama-3-instruct");
        const string sysUser = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>";
        const string prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n";
        Assert.Equal(sysUser + prompt, t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal(sysUser, t.Render(SystemUser, addGenerationPrompt: false));
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" + prompt,
            t.Render(MultiTurn, addGenerationPrompt: true));
        Assert.Equal("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nspaced<|eot_id|>",
            t.Render([new("user", " \n spaced \n")], addGenerationPrompt: false));
    }

    [Fact]
    public void MistralV01_InstructionsAndEos()
    {
        var t = Load("mistral-instruct-v0.1");
        ChatTurn[] chat = [new("user", "Hi"), new("assistant", "Hello!"), new("user", "How are you?")];
        Assert.Equal("<s>[INST] Hi [/INST]Hello!</s> [INST] How are you? [/INST]", t.Render(chat, addGenerationPrompt: true));
        Assert.Equal("<s>[INST] Hi [/INST]Hello!</s> ", t.Render(UserAssistant, addGenerationPrompt: false));
        var e = Assert.Throws<ChatTemplateException>(() => t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.RaisedMessage);
        ChatTurn[] tool = [new("user", "Hi"), new("tool", "42")];
        Assert.Equal("Only user and assistant roles are supported!",
            Assert.Throws<ChatTemplateException>(() => t.Render(tool, addGenerationPrompt: true)).RaisedMessage);
    }

    [Fact]
    public void MistralV02_OptionalSystemMessageAndWhitespaceControl()
    {
        var t = Load("mistral-instruct-v0.2");
        Assert.Equal("<s> [INST] You are a helpful assistant.\n\nHello! [/INST]", t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal("<s> [INST] You are terse.\n\nHi [/INST] Hello! How can I help?</s> [INST] What is 2+2? [/INST]",
            t.Render(MultiTurn, addGenerationPrompt: true));
        Assert.Equal("<s> [INST] Hi [/INST] Hello!</s>", t.Render(UserAssistant, addGenerationPrompt: false));
        ChatTurn[] tool = [new("user", "Hi"), new("tool", "42")];
        Assert.Equal("Only user and assistant roles are supported, with the exception of an initial optional system message!",
            Assert.Throws<ChatTemplateException>(() => t.Render(tool, addGenerationPrompt: true)).RaisedMessage);
    }

    [Fact]
    public void Qwen2_ChatMLWithDefaultSystemMessage()
    {
        var t = Load("qwen2-instruct");
        Assert.Null(t.BosToken);
        Assert.Equal("<|im_end|>", t.EosToken);
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
            t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            t.Render([new("user", "Hi")], addGenerationPrompt: true));
        Assert.Equal(
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
            t.Render(MultiTurn, addGenerationPrompt: false));
    }

    [Theory]
    [InlineData("zephyr-7b-beta")]
    [InlineData("tinyllama-1.1b-chat-v1.0")]
    public void ZephyrAndTinyLlama_TrimBlocksKeepOneNewlinePerTurn(string model)
    {
        var t = Load(model);
        Assert.Equal("<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\n", t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal("<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n", t.Render(SystemUser, addGenerationPrompt: false));
        Assert.Equal(
            "<|system|>\nYou are terse.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello! How can I help?</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
            t.Render(MultiTurn, addGenerationPrompt: true));
    }

    [Fact]
    public void SmolLM_PlainChatMLAndSmolLM2DefaultSystemMessage()
    {
        var t = Load("smollm-instruct");
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
            t.Render(SystemUser, addGenerationPrompt: true));
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n", t.Render(UserAssistant, addGenerationPrompt: false));
        var t2 = Load("smollm2-instruct");
        Assert.Equal(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            t2.Render([new("user", "Hi")], addGenerationPrompt: true));
    }

    [Fact]
    public void Parse_UsesTheGivenTokens_AndLeavesMissingOnesUndefined()
    {
        var t = ChatTemplate.Parse("{{ bos_token }}|{{ eos_token }}|{{ bos_token is defined }}", bosToken: "<b>");
        Assert.Equal("<b>||True", t.Render([], addGenerationPrompt: false));
        Assert.Equal("True", ChatTemplate.Parse("{{ tools is none }}").Render([], false));
    }
}
