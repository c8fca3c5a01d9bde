// adapter_config.json of X-LoRA (docs/formats/xlora.md#files-peft-layout, PEFT's XLoraConfig): hidden_size, the experts
// (adapters: name → path; the names must be "0" … "E−1", the experts live in the sub-folders named so), the classifier
// (xlora_depth, xlora_size, xlora_dropout_p, layerwise_scalings) and the gate (enable_softmax, softmax_temperature,
// top_k_lora, enable_softmax_topk), scaling_pass_value, global_scaling_weight, use_trainable_adapters (false only).
// Written sorted with two-space indent as PEFT writes it; read strictly (a bad field names itself).
using System.Globalization;
using System.Text.Json;
using PeftKernels.Ops;

namespace PeftKernels.Peft.XLora;

/// <summary>X-LoRA's config, as PEFT's XLoraConfig.</summary>
public sealed record XLoraConfig : PeftConfig
{
    /// <inheritdoc/>
    public override string PeftType => "XLORA";

    /// <summary>hidden_size: the base model's hidden size (the classifier's input).</summary>
    public int HiddenSize { get; init; }

    /// <summary>The number of LoRA experts E (named "0" … "E−1" in <c>adapters</c>).</summary>
    public int Experts { get; init; }

    /// <summary>enable_softmax: softmax over the experts of the classifier's logits.</summary>
    public bool EnableSoftmax { get; init; } = true;

    /// <summary>enable_softmax_topk: a softmax over the top-k kept scalings.</summary>
    public bool EnableSoftmaxTopK { get; init; }

    /// <summary>layerwise_scalings: one set of E scalings per LoRA module (the classifier outputs E·L).</summary>
    public bool LayerwiseScalings { get; init; }

    /// <summary>xlora_depth: 1 = one Linear; d &gt; 1 = d − 1 hidden layers of <see cref="XLoraSize"/> with ReLU, then the last Linear.</summary>
    public int XLoraDepth { get; init; } = 1;

    /// <summary>xlora_size: the classifier's hidden width (depth &gt; 1).</summary>
    public int XLoraSize { get; init; } = 2048;

    /// <summary>xlora_dropout_p: dropout after each hidden ReLU while training (depth &gt; 1).</summary>
    public double XLoraDropoutP { get; init; } = 0.2;

    /// <summary>use_trainable_adapters: must be false (the experts stay frozen).</summary>
    public bool UseTrainableAdapters { get; init; }

    /// <summary>softmax_temperature.</summary>
    public double SoftmaxTemperature { get; init; } = 1.0;

    /// <summary>top_k_lora: keep the k largest scalings per token, or null for all.</summary>
    public int? TopKLora { get; init; }

    /// <summary>scaling_pass_value: the scaling of every expert in the scaling pass (0: the plain base model).</summary>
    public double ScalingPassValue { get; init; }

    /// <summary>global_scaling_weight: multiplies every expert branch.</summary>
    public double GlobalScalingWeight { get; init; } = 1.0;

    /// <summary>The expert names "0" … "E−1".</summary>
    public IReadOnlyList<string> ExpertNames => [.. Enumerable.Range(0, Experts).Select(i => i.ToString(CultureInfo.InvariantCulture))];

    /// <summary>The gate's settings for the op.</summary>
    public XLoraGateOptions Gate => new(Experts, (float)SoftmaxTemperature, EnableSoftmax, TopKLora ?? 0, EnableSoftmaxTopK);

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">A value is out of range (the field is named).</exception>
    /// <exception cref="NotSupportedException">use_trainable_adapters is true, or top_k_lora is set with a nonzero scaling_pass_value.</exception>
    public override void Validate()
    {
        static void Require(bool ok, string message)
        {
            if (!ok)
            {
                throw new ArgumentException(message);
            }
        }

        Require(HiddenSize > 0, $"XLoraConfig.hidden_size must be positive; got {HiddenSize}.");
        Require(Experts > 0, $"XLoraConfig.adapters must name at least one expert; got {Experts}.");
        Require(XLoraDepth > 0, $"XLoraConfig.xlora_depth must be positive; got {XLoraDepth}.");
        Require(XLoraDepth == 1 || XLoraSize > 0, $"XLoraConfig.xlora_size must be positive with xlora_depth {XLoraDepth}; got {XLoraSize}.");
        Require(XLoraDropoutP >= 0 && XLoraDropoutP < 1, $"XLoraConfig.xlora_dropout_p must be in [0, 1); got {XLoraDropoutP.ToString(CultureInfo.InvariantCulture)}.");
        Require(SoftmaxTemperature > 0 && double.IsFinite(SoftmaxTemperature), $"XLoraConfig.softmax_temperature must be finite and > 0; got {SoftmaxTemperature.ToString(CultureInfo.InvariantCulture)}.");
        Require(TopKLora is null || (TopKLora >= 1 && TopKLora <= Experts), $"XLoraConfig.top_k_lora must be null or in [1, {Experts}] (the expert count); got {TopKLora}.");
        Require(double.IsFinite(ScalingPassValue) && double.IsFinite(GlobalScalingWeight), "XLoraConfig.scaling_pass_value and global_scaling_weight must be finite.");
        if (UseTrainableAdapters)
        {
            throw new NotSupportedException("XLoraConfig.use_trainable_adapters true is not supported: the LoRA experts stay frozen, only the classifier trains.");
        }

        if (TopKLora != null && ScalingPassValue != 0)
        {
            throw new NotSupportedException($"XLoraConfig.top_k_lora {TopKLora} with scaling_pass_value {ScalingPassValue.ToString(CultureInfo.InvariantCulture)}: "
                + "top-k over the scaling pass's equal scalings is a tie that PEFT leaves to torch.topk; use scaling_pass_value 0.");
        }
    }

    /// <summary>Reads an X-LoRA adapter_config.json strictly.</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is not XLORA, or a field is missing or bad (named).</exception>
    public static new XLoraConfig Load(string path) => ConfigJson.Read<XLoraConfig>(path, ["XLORA"], (_, root) =>
    {
        var config = WithCommon(FromJson(root), root);
        config.Validate();
        return config;
    });

    /// <inheritdoc/>
    private protected override void AddFields(SortedDictionary<string, Action<Utf8JsonWriter>> fields)
    {
        fields["adapters"] = json =>
        {
            json.WriteStartObject();
            foreach (string name in ExpertNames.Order(StringComparer.Ordinal))
            {
                json.WriteString(name, name);
            }

            json.WriteEndObject();
        };
        fields["enable_softmax"] = json => json.WriteBooleanValue(EnableSoftmax);
        fields["enable_softmax_topk"] = json => json.WriteBooleanValue(EnableSoftmaxTopK);
        fields["global_scaling_weight"] = json => json.WriteRawValue(ConfigJson.PythonFloat(GlobalScalingWeight));
        fields["hidden_size"] = json => json.WriteNumberValue(HiddenSize);
        fields["layerwise_scalings"] = json => json.WriteBooleanValue(LayerwiseScalings);
        fields["scaling_pass_value"] = json => json.WriteRawValue(ConfigJson.PythonFloat(ScalingPassValue));
        fields["softmax_temperature"] = json => json.WriteRawValue(ConfigJson.PythonFloat(SoftmaxTemperature));
        fields["top_k_lora"] = json =>
        {
            if (TopKLora is { } k)
            {
                json.WriteNumberValue(k);
            }
            else
            {
                json.WriteNullValue();
            }
        };
        fields["use_trainable_adapters"] = json => json.WriteBooleanValue(UseTrainableAdapters);
        fields["xlora_depth"] = json => json.WriteNumberValue(XLoraDepth);
        fields["xlora_dropout_p"] = json => json.WriteRawValue(ConfigJson.PythonFloat(XLoraDropoutP));
        fields["xlora_size"] = json => json.WriteNumberValue(XLoraSize);
    }

    private static XLoraConfig FromJson(JsonElement root)
    {
        var adapters = new List<string>();
        if (ConfigJson.Get(root, "adapters") is { } map)
        {
            if (map.ValueKind != JsonValueKind.Object)
            {
                throw ConfigJson.WrongType("adapters", "an object of expert name → path", map);
            }

            foreach (var entry in map.EnumerateObject())
            {
                adapters.Add(entry.Value.ValueKind == JsonValueKind.String ? entry.Name : throw ConfigJson.WrongType($"adapters[\"{entry.Name}\"]", "a path string", entry.Value));
            }
        }

        if (adapters.Count == 0)
        {
            throw new InvalidDataException("\"adapters\" is missing or empty: X-LoRA needs its LoRA experts named \"0\", \"1\", ….");
        }

        var expected = Enumerable.Range(0, adapters.Count).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToHashSet(StringComparer.Ordinal);
        if (adapters.Distinct(StringComparer.Ordinal).Count() != adapters.Count)
        {
            throw new InvalidDataException($"\"adapters\" names an expert twice: [{string.Join(", ", adapters.Select(k => $"\"{k}\""))}].");
        }

        var wrong = adapters.Where(k => !expected.Contains(k)).ToList();
        if (wrong.Count > 0)
        {
            throw new InvalidDataException($"\"adapters\" names its experts [{string.Join(", ", adapters.Select(k => $"\"{k}\""))}]; X-LoRA experts must be named "
                + $"\"0\" … \"{adapters.Count - 1}\" (PEFT loads them as str(i) and leaves experts of other names silently inactive).");
        }

        int hidden = ConfigJson.Int(root, "hidden_size") ?? throw new InvalidDataException("\"hidden_size\" is missing: X-LoRA needs the base model's hidden size.");
        return new XLoraConfig
        {
            HiddenSize = hidden,
            Experts = adapters.Count,
            EnableSoftmax = ConfigJson.Bool(root, "enable_softmax") ?? true,
            EnableSoftmaxTopK = ConfigJson.Bool(root, "enable_softmax_topk") ?? false,
            LayerwiseScalings = ConfigJson.Bool(root, "layerwise_scalings") ?? false,
            XLoraDepth = ConfigJson.Int(root, "xlora_depth") ?? 1,
            XLoraSize = ConfigJson.Int(root, "xlora_size") ?? 2048,
            XLoraDropoutP = ConfigJson.Num(root, "xlora_dropout_p") ?? 0.2,
            UseTrainableAdapters = ConfigJson.Bool(root, "use_trainable_adapters") ?? false,
            SoftmaxTemperature = ConfigJson.Num(root, "softmax_temperature") ?? 1.0,
            TopKLora = ConfigJson.Int(root, "top_k_lora"),
            ScalingPassValue = ConfigJson.Num(root, "scaling_pass_value") ?? 0.0,
            GlobalScalingWeight = ConfigJson.Num(root, "global_scaling_weight") ?? 1.0,
        };
    }
}
