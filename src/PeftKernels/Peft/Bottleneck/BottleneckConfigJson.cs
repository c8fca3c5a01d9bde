// adapter_config.json of one bottleneck adapter in AdapterHub's layout (docs/formats/bottleneck-adapters.md#files):
//   {"config": {BnConfig's fields, sorted}, "hidden_size": H, "model_class": "LlamaForCausalLM",
//    "model_name": ..., "model_type": "llama", "name": NAME, "version": "adapters.x.y.z"}
// Written with sorted keys and 2-space indentation (as AdapterHub's json.dump(sort_keys=True,
// indent=2)); the fields this library does not implement are written with AdapterHub's defaults and
// refused on reading when they hold anything else. Reading is strict: a missing or mistyped field
// throws InvalidDataException naming the file and the field.
using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>The non-config fields of an AdapterHub adapter_config.json (kept so a save → load → save is byte-identical).</summary>
/// <param name="Name">The adapter's name.</param>
/// <param name="HiddenSize">The model's hidden size.</param>
/// <param name="ModelName">model_name (the base model's name or path).</param>
/// <param name="Version">version ("adapters." + the library version).</param>
public sealed record AdapterFileInfo(string Name, int HiddenSize, string ModelName, string Version)
{
    /// <summary>The version written into fresh files.</summary>
    public const string DefaultVersion = "adapters.1.2.0";
}

/// <summary>Reads and writes AdapterHub's adapter_config.json for bottleneck adapters.</summary>
public static class BottleneckConfigJson
{
    /// <summary>The file name.</summary>
    public const string FileName = "adapter_config.json";

    /// <summary>The JSON bytes of <paramref name="config"/> with the file's other fields.</summary>
    public static byte[] Write(BottleneckConfig config, AdapterFileInfo info)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(info);
        var fields = new SortedDictionary<string, Action<Utf8JsonWriter>>(StringComparer.Ordinal)
        {
            ["adapter_residual_before_ln"] = w => w.WriteBooleanValue(false),
            ["cross_adapter"] = w => w.WriteBooleanValue(false),
            ["dropout"] = w => w.WriteRawValue("0.0"),
            ["factorized_phm_W"] = w => w.WriteBooleanValue(true),
            ["factorized_phm_rule"] = w => w.WriteBooleanValue(false),
            ["hypercomplex_nonlinearity"] = w => w.WriteStringValue("glorot-uniform"),
            ["init_weights"] = w => w.WriteStringValue(config.InitWeights),
            ["inv_adapter"] = w => w.WriteNullValue(),
            ["inv_adapter_reduction_factor"] = w => w.WriteNullValue(),
            ["is_parallel"] = w => w.WriteBooleanValue(config.IsParallel),
            ["leave_out"] = w =>
            {
                w.WriteStartArray();
                foreach (int l in config.LeaveOut)
                {
                    w.WriteNumberValue(l);
                }

                w.WriteEndArray();
            },
            ["learn_phm"] = w => w.WriteBooleanValue(true),
            ["ln_after"] = w => w.WriteBooleanValue(false),
            ["ln_before"] = w => w.WriteBooleanValue(false),
            ["mh_adapter"] = w => w.WriteBooleanValue(config.MhAdapter),
            ["non_linearity"] = w => w.WriteStringValue(config.NonLinearity),
            ["original_ln_after"] = w => w.WriteBooleanValue(true),
            ["original_ln_before"] = w => w.WriteBooleanValue(config.OriginalLnBefore),
            ["output_adapter"] = w => w.WriteBooleanValue(config.OutputAdapter),
            ["phm_bias"] = w => w.WriteBooleanValue(true),
            ["phm_c_init"] = w => w.WriteStringValue("normal"),
            ["phm_dim"] = w => w.WriteNumberValue(4),
            ["phm_init_range"] = w => w.WriteRawValue("0.0001"),
            ["phm_layer"] = w => w.WriteBooleanValue(false),
            ["phm_rank"] = w => w.WriteNumberValue(1),
            ["reduction_factor"] = w => w.WriteRawValue(Number(config.ReductionFactor, integralAsInt: true)),
            ["residual_before_ln"] = w => w.WriteBooleanValue(true),
            ["scaling"] = w =>
            {
                switch (config.ScalingKind)
                {
                    case BottleneckScalingKind.Learned: w.WriteStringValue("learned"); break;
                    case BottleneckScalingKind.Channel: w.WriteStringValue("channel"); break;
                    default: w.WriteRawValue(Number(config.Scaling, integralAsInt: false)); break;
                }
            },
            ["shared_W_phm"] = w => w.WriteBooleanValue(false),
            ["shared_phm_rule"] = w => w.WriteBooleanValue(true),
            ["stochastic_depth"] = w => w.WriteRawValue("0.0"),
            ["use_gating"] = w => w.WriteBooleanValue(false),
        };
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WritePropertyName("config");
            w.WriteStartObject();
            foreach (var (key, write) in fields)
            {
                w.WritePropertyName(key);
                write(w);
            }

            w.WriteEndObject();
            WriteInfo(w, info);
            w.WriteEndObject();
        }

        stream.WriteByte((byte)'\n');
        return stream.ToArray();
    }

    /// <summary>Reads <paramref name="path"/> strictly.</summary>
    /// <exception cref="InvalidDataException">A missing, mistyped or unsupported field (named with the file).</exception>
    public static (BottleneckConfig Config, AdapterFileInfo Info) Read(string path)
    {
        using var document = JsonFiles.Parse(path);
        var root = document.RootElement;
        var c = JsonFiles.Object(root, "config", path);
        JsonFiles.RequireValue(c, "ln_before", false, path);
        JsonFiles.RequireValue(c, "ln_after", false, path);
        JsonFiles.RequireValue(c, "use_gating", false, path);
        JsonFiles.RequireValue(c, "phm_layer", false, path);
        JsonFiles.RequireValue(c, "original_ln_after", true, path);
        JsonFiles.RequireValue(c, "residual_before_ln", true, path);
        JsonFiles.RequireNullOrAbsent(c, "inv_adapter", path);
        JsonFiles.RequireZeroOrAbsent(c, "dropout", path);
        JsonFiles.RequireZeroOrAbsent(c, "stochastic_depth", path);
        if (c.TryGetProperty("architecture", out var arch) && arch.ValueKind != JsonValueKind.Null && arch.GetString() != "bottleneck")
        {
            throw new InvalidDataException($"{path}: config.architecture is '{arch}', not a bottleneck adapter.");
        }

        var scalingElement = JsonFiles.Property(c, "scaling", path, required: false);
        var config = new BottleneckConfig
        {
            MhAdapter = JsonFiles.Bool(c, "mh_adapter", path),
            OutputAdapter = JsonFiles.Bool(c, "output_adapter", path),
            ReductionFactor = c.TryGetProperty("reduction_factor", out var rf) && rf.ValueKind == JsonValueKind.Object
                ? throw new InvalidDataException($"{path}: config.reduction_factor is a per-layer mapping; only one number for all layers is supported.")
                : JsonFiles.Number(c, "reduction_factor", path),
            NonLinearity = JsonFiles.String(c, "non_linearity", path),
            OriginalLnBefore = JsonFiles.Bool(c, "original_ln_before", path, fallback: false),
            IsParallel = JsonFiles.Bool(c, "is_parallel", path, fallback: false),
            InitWeights = c.TryGetProperty("init_weights", out _) ? JsonFiles.String(c, "init_weights", path) : "bert",
            LeaveOut = c.TryGetProperty("leave_out", out var lo) && lo.ValueKind == JsonValueKind.Array
                ? [.. lo.EnumerateArray().Select(e => e.TryGetInt32(out int l) ? l : throw new InvalidDataException($"{path}: config.leave_out holds {e}, not a layer index."))]
                : [],
            ScalingKind = scalingElement?.ValueKind == JsonValueKind.String
                ? scalingElement.Value.GetString() switch
                {
                    "learned" => BottleneckScalingKind.Learned,
                    "channel" => BottleneckScalingKind.Channel,
                    var s => throw new InvalidDataException($"{path}: config.scaling '{s}' is not a number, \"learned\" or \"channel\"."),
                }
                : BottleneckScalingKind.Constant,
            Scaling = scalingElement?.ValueKind == JsonValueKind.Number ? scalingElement.Value.GetDouble() : 1.0,
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }

        return (config, ReadInfo(root, path));
    }

    internal static void WriteInfo(Utf8JsonWriter w, AdapterFileInfo info)
    {
        w.WriteNumber("hidden_size", info.HiddenSize);
        w.WriteString("model_class", "LlamaForCausalLM");
        w.WriteString("model_name", info.ModelName);
        w.WriteString("model_type", "llama");
        w.WriteString("name", info.Name);
        w.WriteString("version", info.Version);
    }

    internal static AdapterFileInfo ReadInfo(JsonElement root, string path)
    {
        var type = root.TryGetProperty("model_type", out var t) ? t.GetString() : null;
        if (type != null && type != "llama" && type != "mistral" && type != "qwen2")
        {
            throw new InvalidDataException($"{path}: model_type is '{type}'; this adapter was made for another architecture than Llama.");
        }

        return new AdapterFileInfo(JsonFiles.String(root, "name", path), (int)JsonFiles.Number(root, "hidden_size", path),
            root.TryGetProperty("model_name", out var mn) && mn.ValueKind == JsonValueKind.String ? mn.GetString()! : "",
            root.TryGetProperty("version", out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : AdapterFileInfo.DefaultVersion);
    }

    /// <summary>Python's repr of a number: integral values as ints (reduction_factor 16) or floats (scaling 4.0).</summary>
    internal static string Number(double value, bool integralAsInt) =>
        value == Math.Floor(value) && Math.Abs(value) < 1e15
            ? ((long)value).ToString(CultureInfo.InvariantCulture) + (integralAsInt ? "" : ".0")
            : value.ToString("R", CultureInfo.InvariantCulture);
}
