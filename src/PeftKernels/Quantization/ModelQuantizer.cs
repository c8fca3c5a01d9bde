// Whole-checkpoint 4-bit quantization and its inverse, for a .safetensors file or a Hugging
// Face model folder (single or sharded; see Checkpoint.cs):
//   quantize:   each selected 2-D F32/F16/BF16 "*.weight" W becomes bitsandbytes' Linear4bit
//               keys (Bnb4bitStateDict), in W's shard, at W's place; error = dequant(Q(W)) − W
//               in fp32 (bf16/f16 are widened exactly first).
//   dequantize: each 4-bit weight (found by its quant_state key) becomes one plain tensor of
//               the chosen dtype, name and shape restored; error = cast(dequant) − dequant.
// Every other tensor is copied byte for byte; "__metadata__" is kept; config and tokenizer
// files are copied (dequantize drops config.json's quantization_config, which no longer applies,
// and keeps every other key as written); the index is rewritten with the new keys and total_size. A folder output
// is never the input folder, inside it, or a folder holding it; writing into an existing one
// removes the model files of the old output that were not written again (CheckpointWriter).
using System.Text.Encodings.Web;
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Quantization;

/// <summary>Quantizes a model checkpoint to bitsandbytes 4-bit weights, or restores plain weights from one.</summary>
public static class ModelQuantizer
{
    private static readonly string[] StateSuffixes =
        [.. new[] { Quant4Type.Nf4, Quant4Type.Fp4 }.Select(t => Bnb4bitStateDict.QuantStateKey("", t))];

    private static readonly string[] PartSuffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", .. StateSuffixes];

    private delegate (IReadOnlyList<SafeTensor> Tensors, TensorConversion Row)? Converter(SafeTensorsFile file, SafeTensorInfo info);

    /// <summary>
    /// Quantizes <paramref name="input"/> (a .safetensors file, or a folder with model.safetensors or a sharded
    /// index) into <paramref name="output"/> (a file, or a folder with the same shard names), writes the report
    /// table to <paramref name="log"/> and returns it.
    /// </summary>
    /// <remarks>
    /// Selected: every 2-D F32/F16/BF16 tensor named <c>*.weight</c> except names containing "embed", "lm_head"
    /// or "norm" (case-insensitive); <see cref="QuantizeOptions.Include"/> replaces that default exclusion,
    /// <see cref="QuantizeOptions.Exclude"/> removes matches.
    /// </remarks>
    /// <exception cref="ArgumentException">Invalid options, or the output is the input (or, for folders, inside it or holding it).</exception>
    /// <exception cref="FileNotFoundException">The input, or a shard its index names, does not exist.</exception>
    /// <exception cref="InvalidDataException">A malformed file or index, a non-finite weight, or a key the 4-bit keys would overwrite.</exception>
    public static ConversionReport Quantize(string input, string output, QuantizeOptions options, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(log);
        var (include, exclude) = options.Validate();
        var checkpoint = Checkpoint.Open(input, output);
        var selected = checkpoint.Tensors
            .Where(t => IsCandidate(t.Info) && (include?.IsMatch(t.Name) ?? IsDefaultTarget(t.Name)) && !(exclude?.IsMatch(t.Name) ?? false))
            .ToDictionary(t => t.Name, StringComparer.Ordinal);
        foreach (var tensor in selected.Values)
        {
            foreach (string suffix in PartSuffixes)
            {
                if (checkpoint.ByName.TryGetValue(tensor.Name + suffix, out var clash))
                {
                    throw new InvalidDataException($"{checkpoint.ShardPath(clash.Shard)}: quantizing '{tensor.Name}' would overwrite the existing tensor '{clash.Name}'.");
                }
            }
        }

        string type = BnbQuantState.TypeName(options.Type);
        log.WriteLine($"quantize {type}, blocksize {options.Blocksize}, double-quant {(options.DoubleQuant ? "on" : "off")}: {input} -> {output}");
        return Run("quantize", checkpoint, output, log, _ => false, [],
            (file, info) => selected.ContainsKey(info.Name) ? QuantizeOne(file, info, options) : null);
    }

    /// <summary>
    /// Replaces every bitsandbytes 4-bit weight of <paramref name="input"/> by a plain tensor of
    /// <see cref="DequantizeOptions.DType"/> in <paramref name="output"/>, writes the report table to
    /// <paramref name="log"/> and returns it. Input and output forms are as for <see cref="Quantize"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Invalid options, or the output is the input (or, for folders, inside it or holding it).</exception>
    /// <exception cref="FileNotFoundException">The input, or a shard its index names, does not exist.</exception>
    /// <exception cref="InvalidDataException">A malformed file, index or 4-bit weight, or a value outside the float16 range.</exception>
    public static ConversionReport Dequantize(string input, string output, DequantizeOptions options, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(log);
        options.Validate();
        var checkpoint = Checkpoint.Open(input, output);
        var weights = new Dictionary<string, long>(StringComparer.Ordinal);
        var parts = new HashSet<string>(StringComparer.Ordinal);
        foreach (var state in checkpoint.Tensors)
        {
            string? suffix = StateSuffixes.FirstOrDefault(s => state.Name.EndsWith(s, StringComparison.Ordinal) && state.Name.Length > s.Length);
            string? key = suffix == null ? null : state.Name[..^suffix.Length];
            if (key == null || weights.ContainsKey(key))
            {
                continue;
            }

            string where = checkpoint.ShardPath(state.Shard);
            if (!checkpoint.ByName.TryGetValue(key, out var packed) || packed.Shard != state.Shard)
            {
                throw new InvalidDataException(packed == null
                    ? $"{where}: '{state.Name}' is a 4-bit quant state, but the packed weight '{key}' is missing."
                    : $"{where}: '{state.Name}' is in shard '{state.Shard}' but its packed weight '{key}' is in '{packed.Shard}'; the keys of one 4-bit weight must share a shard.");
            }

            long bytes = packed.Info.ByteLength;
            foreach (string partSuffix in PartSuffixes)
            {
                if (checkpoint.ByName.TryGetValue(key + partSuffix, out var part))
                {
                    if (part.Shard != state.Shard)
                    {
                        throw new InvalidDataException(
                            $"{where}: '{part.Name}' is in shard '{part.Shard}' but the rest of the 4-bit weight '{key}' is in '{state.Shard}'; the keys of one 4-bit weight must share a shard.");
                    }

                    parts.Add(part.Name);
                    bytes += part.Info.ByteLength;
                }
            }

            weights.Add(key, bytes);
        }

        log.WriteLine($"dequantize to {options.DType.HeaderName()}: {input} -> {output}");
        return Run("dequantize", checkpoint, output, log, parts.Contains, ["quantization_config"],
            (file, info) => weights.TryGetValue(info.Name, out long before) ? DequantizeOne(file, info.Name, before, options) : null);
    }

    private static bool IsCandidate(SafeTensorInfo info) =>
        info.Name.EndsWith(".weight", StringComparison.Ordinal)
        && info.Shape.Count == 2
        && info.DType is SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16
        && info.ElementCount > 0;

    private static bool IsDefaultTarget(string name) =>
        !name.Contains("embed", StringComparison.OrdinalIgnoreCase)
        && !name.Contains("lm_head", StringComparison.OrdinalIgnoreCase)
        && !name.Contains("norm", StringComparison.OrdinalIgnoreCase);

    /// <summary>Converts shard by shard, staging every output file, then commits them (index last) and reports.</summary>
    private static ConversionReport Run(string operation, Checkpoint checkpoint, string output, TextWriter log,
        Func<string, bool> dropped, string[] droppedConfigKeys, Converter convert)
    {
        string outputFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(output));
        var rows = new List<TensorConversion>();
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        int copied = 0;
        long before = 0, after = 0;
        using var writer = checkpoint.IsFolder ? new CheckpointWriter(outputFull, ownsFolder: true) : new CheckpointWriter(Path.GetDirectoryName(outputFull)!);
        foreach (string shard in checkpoint.Shards)
        {
            var tensors = new List<SafeTensor>();
            string outName = checkpoint.IsFolder ? shard : Path.GetFileName(outputFull);
            int converted = rows.Count;
            using (var file = SafeTensorsFile.Open(checkpoint.ShardPath(shard)))
            {
                foreach (string name in file.Names)
                {
                    var info = file.GetInfo(name);
                    before += info.ByteLength;
                    if (dropped(name))
                    {
                        continue;
                    }

                    if (convert(file, info) is { } result)
                    {
                        tensors.AddRange(result.Tensors);
                        rows.Add(result.Row);
                    }
                    else
                    {
                        tensors.Add(new SafeTensor(name, info.DType, [.. info.Shape], file.ReadBytes(name)));
                        copied++;
                    }
                }

                writer.StageSafeTensors(outName, tensors, file.Metadata);
            }

            foreach (var tensor in tensors)
            {
                weightMap.Add(tensor.Name, outName);
                after += tensor.Data.Length;
            }

            if (checkpoint.Shards.Count > 1)
            {
                log.WriteLine($"  {shard}: {tensors.Count} tensors, {rows.Count - converted} {operation}d");
            }
        }

        foreach (string other in checkpoint.OtherFiles())
        {
            if (other == "config.json" && WithoutKeys(checkpoint.ShardPath(other), droppedConfigKeys) is { } json)
            {
                AtomicFile.Write(writer.StagePath(other), stream => stream.Write(json));
                log.WriteLine($"  config.json: dropped {string.Join(", ", droppedConfigKeys)}");
            }
            else
            {
                writer.StageCopy(checkpoint.ShardPath(other), other);
            }
        }

        foreach (string folder in checkpoint.SubFolders())
        {
            log.WriteLine($"  not copied: subfolder '{folder}'");
        }

        if (checkpoint.IndexPath != null)
        {
            writer.StageIndex(Checkpoint.IndexName, weightMap, after, checkpoint.IndexMetadata);
        }

        var files = writer.Commit();
        var report = new ConversionReport(operation, checkpoint.IsFolder ? checkpoint.Folder : checkpoint.ShardPath(checkpoint.Shards[0]),
            outputFull, rows, copied, before, after, files);
        report.WriteTable(log);
        return report;
    }

    /// <summary>
    /// The JSON object of <paramref name="path"/> without <paramref name="keys"/> (other keys as written), or null when it
    /// has none of them or is not a JSON object (then it is copied as it is: the conversion does not read it).
    /// </summary>
    private static byte[]? WithoutKeys(string path, string[] keys)
    {
        if (keys.Length == 0)
        {
            return null;
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException)
        {
            return null;
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !keys.Any(k => root.TryGetProperty(k, out _)))
            {
                return null;
            }

            using var stream = new MemoryStream();
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                foreach (var property in root.EnumerateObject().Where(p => !keys.Contains(p.Name)))
                {
                    property.WriteTo(w);
                }

                w.WriteEndObject();
            }

            stream.WriteByte((byte)'\n');
            return stream.ToArray();
        }
    }

    private static (IReadOnlyList<SafeTensor>, TensorConversion) QuantizeOne(SafeTensorsFile file, SafeTensorInfo info, QuantizeOptions options)
    {
        int[] shape = [.. info.Shape.Select(d => d <= int.MaxValue
            ? (int)d
            : throw new InvalidDataException($"{file.Path}: tensor '{info.Name}' has dimension {d}; at most {int.MaxValue} is supported."))];
        float[] original = file.ReadFloat32(info.Name);
        int bad = Array.FindIndex(original, v => !float.IsFinite(v));
        if (bad >= 0)
        {
            throw new InvalidDataException($"{file.Path}: tensor '{info.Name}' has the non-finite value {original[bad]} at index {bad}; 4-bit quantization needs finite weights.");
        }

        string dtype = info.DType switch
        {
            SafeTensorDType.BF16 => "bfloat16",
            SafeTensorDType.F16 => "float16",
            _ => "float32",
        };
        var weight = QuantizedWeight.Quantize(original, shape, options.Type, options.Blocksize, options.DoubleQuant, dtype, options.Kernel);
        float[] restored = weight.Dequantize(options.Kernel);
        var (mean, max) = Errors(restored, original);
        var tensors = Bnb4bitStateDict.ToTensors(info.Name, weight);
        var row = new TensorConversion(info.Name, info.Shape, info.DType.HeaderName(), Describe(weight),
            info.ByteLength, tensors.Sum(t => (long)t.Data.Length), mean, max);
        return (tensors, row);
    }

    private static (IReadOnlyList<SafeTensor>, TensorConversion) DequantizeOne(SafeTensorsFile file, string name, long bytesBefore, DequantizeOptions options)
    {
        var weight = Bnb4bitStateDict.FromTensors(file, name);
        float[] values = weight.Dequantize(options.Kernel);
        long[] shape = [.. weight.Shape.Select(d => (long)d)];
        SafeTensor tensor;
        float[] cast;
        switch (options.DType)
        {
            case SafeTensorDType.BF16:
                var bits = new ushort[values.Length];
                Bf16.FromSingle(values, bits);
                tensor = SafeTensor.FromBf16Bits(name, bits, shape);
                cast = Array.ConvertAll(bits, Bf16.ToSingle);
                break;
            case SafeTensorDType.F16:
                var halves = Array.ConvertAll(values, v => (Half)v);
                int overflow = Array.FindIndex(halves, Half.IsInfinity);
                if (overflow >= 0)
                {
                    throw new InvalidDataException(
                        $"{file.Path}: '{name}'[{overflow}] dequantizes to {values[overflow]}, outside the float16 range (±65504); choose f32 or bf16.");
                }

                tensor = SafeTensor.FromHalf(name, halves, shape);
                cast = Array.ConvertAll(halves, h => (float)h);
                break;
            default:
                tensor = SafeTensor.FromFloat32(name, values, shape);
                cast = values;
                break;
        }

        var (mean, max) = Errors(cast, values);
        var row = new TensorConversion(name, shape, Describe(weight), options.DType.HeaderName(), bytesBefore, tensor.Data.Length, mean, max);
        return ([tensor], row);
    }

    private static string Describe(QuantizedWeight weight) =>
        BnbQuantState.TypeName(weight.Type) + (weight.IsNested ? "+dq" : "") + (weight.Blocksize == 64 ? "" : $"/{weight.Blocksize}");

    private static (double Mean, double Max) Errors(float[] actual, float[] expected)
    {
        double sum = 0, max = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double error = Math.Abs((double)actual[i] - expected[i]);
            sum += error;
            max = Math.Max(max, error);
        }

        return (actual.Length == 0 ? 0 : sum / actual.Length, max);
    }
}
