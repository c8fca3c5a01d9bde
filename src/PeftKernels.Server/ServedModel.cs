// The model a server serves, loaded from a Hugging Face folder: the weights (LlamaForCausalLM), the
// tokenizer (HfTokenizer.ForModel: the folder's tokenizer, or bytes when it has none), the base model's
// name (the folder's name), the ids that end a generation (EOS: generation_config.json and config.json,
// GenerationConfig.EosTokenIds), and the chat renderer for /v1/chat/completions (the folder's chat
// template, ChatTemplate.FromModelFolder; null: chat is refused with a clear 400).
using PeftKernels.Models;
using PeftKernels.Serving;
using PeftKernels.Text;

namespace PeftKernels.Server;

/// <summary>A loaded model with what serving it needs.</summary>
/// <param name="Name">The base model's name (what <c>model</c> names to run without an adapter).</param>
/// <param name="Model">The weights (on the CPU).</param>
/// <param name="Tokenizer">The tokenizer.</param>
/// <param name="EosTokenIds">Token ids that end a generation (finish reason <c>stop</c>).</param>
/// <param name="ChatRenderer">Renders a conversation to the prompt text with the generation prompt; null when the model has no chat template.</param>
public sealed record ServedModel(string Name, LlamaForCausalLM Model, ITokenizer Tokenizer, IReadOnlyList<int> EosTokenIds, Func<IReadOnlyList<ChatTurn>, string>? ChatRenderer)
{
    /// <summary>Loads the model folder <paramref name="folder"/>; its name is <paramref name="name"/> or the folder's name.</summary>
    /// <exception cref="IOException">The folder or a file of it cannot be read.</exception>
    /// <exception cref="InvalidDataException">A file of it is malformed.</exception>
    public static ServedModel Load(string folder, string? name = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!Directory.Exists(folder))
        {
            throw new DirectoryNotFoundException($"--model: the model folder '{folder}' does not exist.");
        }

        var model = LlamaForCausalLM.Load(folder);
        var tokenizer = HfTokenizer.ForModel(folder, model.Config.VocabSize);
        // generation_config.json and config.json may each list several (Llama 3 Instruct: <|end_of_text|> and <|eot_id|>).
        IReadOnlyList<int> eos = GenerationConfig.EosTokenIds(folder);
        if (eos.Count == 0)
        {
            eos = model.Config.EosTokenId ?? (tokenizer.EosId is int id ? [id] : []);
        }

        string baseName = name ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder)));
        var template = ChatTemplate.FromModelFolder(folder);
        Func<IReadOnlyList<ChatTurn>, string>? render = template == null ? null : turns => template.Render(turns, addGenerationPrompt: true);
        return new ServedModel(baseName, model, tokenizer, eos, render);
    }
}
