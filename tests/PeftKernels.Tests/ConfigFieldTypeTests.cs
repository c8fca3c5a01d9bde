// A field of the wrong JSON type in adapter_config.json or config.json, or a tokenizer.model that
// is not a SentencePiece model, fails the CLI with one line naming the file, the field and the
// expected and actual type (issue 14 item 4), through the same System.CommandLine root the program builds.
using System.CommandLine;
using System.Text.Json.Nodes;
using PeftKernels.IO;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class ConfigFieldTypeTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Theory]
    [InlineData("r", "\"16\"", "\"r\" must be an integer; it is \"16\" (a string)")]
    [InlineData("r", "16.5", "\"r\" must be an integer; it is 16.5 (a number)")]
    [InlineData("lora_alpha", "\"16\"", "\"lora_alpha\" must be a number; it is \"16\" (a string)")]
    [InlineData("lora_dropout", "[0.1]", "\"lora_dropout\" must be a number; it is [0.1] (a list)")]
    [InlineData("target_modules", "5", "\"target_modules\" must be a string, a list of strings or null; it is 5 (a number)")]
    [InlineData("target_modules", "[\"q_proj\", 3]", "\"target_modules\" must be a string, a list of strings or null; it is [\"q_proj\", 3] (a list)")]
    [InlineData("target_modules", "\"q_proj(\"", "target_modules \"q_proj(\" is not a valid regular expression")]
    [InlineData("exclude_modules", "{}", "\"exclude_modules\" must be a string, a list of strings or null; it is {} (an object)")]
    [InlineData("bias", "false", "\"bias\" must be a string; it is false (a boolean)")]
    [InlineData("use_rslora", "\"yes\"", "\"use_rslora\" must be true or false; it is \"yes\" (a string)")]
    [InlineData("use_dora", "1", "\"use_dora\" must be true or false; it is 1 (a number)")]
    [InlineData("lora_bias", "\"no\"", "\"lora_bias\" must be true or false; it is \"no\" (a string)")]
    [InlineData("fan_in_fan_out", "0", "\"fan_in_fan_out\" must be true or false; it is 0 (a number)")]
    [InlineData("init_lora_weights", "1", "\"init_lora_weights\" must be true or a string; it is 1 (a number)")]
    [InlineData("layers_to_transform", "\"0\"", "\"layers_to_transform\" must be an integer or a list of integers; it is \"0\" (a string)")]
    [InlineData("layers_to_transform", "[0, \"1\"]", "\"layers_to_transform\" must be an integer or a list of integers; it is [0, \"1\"] (a list)")]
    [InlineData("layers_to_transform", "1.5", "\"layers_to_transform\" must be an integer or a list of integers; it is 1.5 (a number)")]
    [InlineData("layers_pattern", "[\"layers\", 2]", "\"layers_pattern\" must be a list of strings; it is [\"layers\", 2] (a list)")]
    [InlineData("rank_pattern", "{\"q_proj\": \"4\"}", "\"rank_pattern[\"q_proj\"]\" must be an integer; it is \"4\" (a string)")]
    [InlineData("rank_pattern", "[4]", "\"rank_pattern\" must be an object of module name → an integer; it is [4] (a list)")]
    [InlineData("rank_pattern", "{\"(q\": 4}", "rank_pattern key \"(q\" \"(^|.*\\.)(q$\" is not a valid regular expression")]
    [InlineData("alpha_pattern", "{\"v_proj\": true}", "\"alpha_pattern[\"v_proj\"]\" must be a number; it is true (a boolean)")]
    [InlineData("modules_to_save", "[\"lm_head\", null]", "\"modules_to_save\" must be a list of strings; it is [\"lm_head\", null] (a list)")]
    [InlineData("modules_to_save", "\"lm_head\"", "\"modules_to_save\" must be a list of strings; it is \"lm_head\" (a string)")]
    [InlineData("task_type", "7", "\"task_type\" must be a string; it is 7 (a number)")]
    [InlineData("base_model_name_or_path", "[]", "\"base_model_name_or_path\" must be a string; it is [] (a list)")]
    [InlineData("revision", "{}", "\"revision\" must be a string; it is {} (an object)")]
    [InlineData("peft_type", "1", "\"peft_type\" must be a string (\"LORA\" or \"IA3\"); it is 1 (a number)")]
    public void AdaptersInspectNamesTheFileTheFieldAndBothTypes(string field, string json, string expected)
    {
        string config = WriteAdapter("LORA", field, json);

        var (code, output, error) = Invoke("adapters", "inspect", Path.GetDirectoryName(config)!);

        Assert.Equal((1, ""), (code, output));
        Assert.StartsWith($"error: {config}: {expected}", error);
        Assert.DoesNotContain("requires an element of type", error);
        Assert.Single(error.TrimEnd('\n').Split('\n'));
    }

    [Theory]
    [InlineData("target_modules", "1", "\"target_modules\" must be a string, a list of strings or null; it is 1 (a number)")]
    [InlineData("feedforward_modules", "[false]", "\"feedforward_modules\" must be a string, a list of strings or null; it is [false] (a list)")]
    [InlineData("fan_in_fan_out", "\"no\"", "\"fan_in_fan_out\" must be true or false; it is \"no\" (a string)")]
    [InlineData("init_ia3_weights", "[]", "\"init_ia3_weights\" must be true or false; it is [] (a list)")]
    public void Ia3FieldsOfTheWrongTypeAreNamed(string field, string json, string expected)
    {
        string config = WriteAdapter("IA3", field, json);

        var (code, _, error) = Invoke("adapters", "inspect", Path.GetDirectoryName(config)!);

        Assert.Equal(1, code);
        Assert.StartsWith($"error: {config}: ", error);
        Assert.Contains(expected, error);
    }

    [Theory]
    [InlineData("vocab_size", "\"256\"", "\"vocab_size\" must be an integer; it is \"256\"")]
    [InlineData("hidden_size", "64.5", "\"hidden_size\" must be an integer; it is 64.5")]
    [InlineData("rms_norm_eps", "\"1e-5\"", "\"rms_norm_eps\" must be a number; it is \"1e-5\"")]
    [InlineData("tie_word_embeddings", "0", "\"tie_word_embeddings\" must be true or false; it is 0")]
    [InlineData("hidden_act", "1", "\"hidden_act\" must be a string; it is 1")]
    [InlineData("eos_token_id", "[1, \"2\"]", "\"eos_token_id\" must be an integer or a list of integers; it is [1, \"2\"]")]
    [InlineData("architectures", "\"LlamaForCausalLM\"", "\"architectures\" must be a list of strings; it is \"LlamaForCausalLM\"")]
    [InlineData("rope_scaling", "[]", "\"rope_scaling\" must be an object or null; it is []")]
    public void ScoreNamesTheConfigJsonFieldOfTheWrongType(string field, string json, string expected)
    {
        string model = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 1f).Save(model);
        string config = Path.Combine(model, "config.json");
        var root = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        root.Remove(field);
        string text = root.ToJsonString();
        File.WriteAllText(config, $"{{\"{field}\": {json}, {text[1..]}");

        var (code, _, error) = Invoke("score", "--model", model, "--tokens", "1,2,3");

        Assert.Equal(1, code);
        Assert.Equal($"error: {config}: {expected}.", error.TrimEnd('\n'));
    }

    [Theory]
    [InlineData(new byte[] { 0, 0, 0, 0 })]
    [InlineData(new byte[] { 0x0A, 0x05, 0x0A })]
    [InlineData(new byte[0])]
    public void GenerateNamesATokenizerModelThatIsNotSentencePiece(byte[] bytes)
    {
        string model = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 1f).Save(model);
        string tokenizer = Path.Combine(model, "tokenizer.model");
        File.WriteAllBytes(tokenizer, bytes);

        var (code, _, error) = Invoke("generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "1");

        Assert.Equal(1, code);
        Assert.StartsWith($"error: {tokenizer}: ", error);
        Assert.Single(error.TrimEnd('\n').Split('\n'));
    }

    private string WriteAdapter(string peftType, string field, string json)
    {
        string dir = Directory.CreateDirectory(Path.Combine(folder.Path, "adapter")).FullName;
        // Raw JSON text, so the error shows the value exactly as written here.
        var fields = new Dictionary<string, string> { ["peft_type"] = $"\"{peftType}\"", ["target_modules"] = "[\"q_proj\", \"v_proj\"]" };
        fields[field] = json;
        string config = Path.Combine(dir, "adapter_config.json");
        File.WriteAllText(config, "{" + string.Join(", ", fields.Select(f => $"\"{f.Key}\": {f.Value}")) + "}");
        SafeTensorsWriter.Write(Path.Combine(dir, "adapter_model.safetensors"), [SafeTensor.FromFloat32("x", [0f], 1)]);
        return config;
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
