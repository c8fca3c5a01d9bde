// Hugging Face folders in and out. Loading reads config.json and model.safetensors (or a
// sharded index), strictly: every tensor the config implies must be present with its exact
// shape, and an unexpected tensor is an error (all offenders listed at once), except the
// rotary inv_freq buffers old checkpoints carry. Storage: F32 stays fp32, BF16 stays bf16
// (frozen), F16 stays fp16 (the GEMM widens it while packing), a bitsandbytes 4-bit Linear
// weight (Bnb4bitStateDict keys, e.g. from `peft quantize`) stays 4-bit; norm weights and
// biases are always fp32. tie_word_embeddings is written as the weights are actually shared.
// Saving writes config.json + model.safetensors (+ tokenizer and generation_config files of the
// source folder) through the staged writer, so the folder is complete or untouched; the model
// files of an earlier output in that folder that were not written again are removed (an old
// index or shards, a tokenizer the source lacks), and the source folder itself (or a folder
// inside it, or one holding it) is refused. config.json keeps every key of the source's
// (LlamaConfigJson) but torch_dtype and tie_word_embeddings, set to what is written, and
// quantization_config, dropped: the weights written are never 4-bit.
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using PeftKernels.Quantization;

namespace PeftKernels.Models;

/// <summary>How weights are stored after loading.</summary>
public enum WeightStorage
{
    /// <summary>As on disk: F32 → fp32, BF16 → bf16, F16 → fp16, a bitsandbytes 4-bit Linear weight → 4-bit.</summary>
    AsStored,

    /// <summary>Everything fp32.</summary>
    Float32,

    /// <summary>Matrices bf16 (norms and biases stay fp32).</summary>
    BFloat16,
}

public sealed partial class LlamaForCausalLM
{
    private static readonly string[] TokenizerFiles = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

    /// <summary>
    /// Loads a Hugging Face model folder. Weights holding NaN or infinite values load as they are (as in PyTorch) and are
    /// listed in <see cref="NonFiniteTensors"/>, for the caller to warn about.
    /// </summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected, or has the wrong shape or dtype.</exception>
    public static LlamaForCausalLM Load(string folder, WeightStorage storage = WeightStorage.AsStored)
    {
        var config = LlamaConfig.Load(Path.Combine(folder, "config.json"));
        var checkpoint = Checkpoint.OpenFolder(folder);
        var files = new Dictionary<string, SafeTensorsFile>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var problems = new List<string>();
        var missing = new List<string>();
        var unexpected = new List<string>();
        var nonFinite = new List<NonFiniteTensor>();
        try
        {
            var model = Build(config, (name, shape) =>
            {
                if (!checkpoint.ByName.TryGetValue(name, out var entry))
                {
                    missing.Add($"missing tensor '{name}' [{string.Join(", ", shape)}]");
                    return new Parameter(new float[shape.Aggregate(1L, (a, d) => a * d)], shape);
                }

                used.Add(name);
                if (!files.TryGetValue(entry.Shard, out var file))
                {
                    file = SafeTensorsFile.Open(checkpoint.ShardPath(entry.Shard));
                    files.Add(entry.Shard, file);
                }

                bool quantized = shape.Length == 2 && Bnb4bitStateDict.IsQuantized(file, name);
                if (!quantized && !entry.Info.Shape.SequenceEqual(shape.Select(d => (long)d)))
                {
                    problems.Add($"tensor '{name}' has shape [{string.Join(", ", entry.Info.Shape)}], expected [{string.Join(", ", shape)}]");
                    return new Parameter(new float[shape.Aggregate(1L, (a, d) => a * d)], shape);
                }

                var read = quantized
                    ? ReadQuantized(file, name, shape, storage, used, problems)
                    : ReadParameter(file, name, entry.Info.DType, shape, storage);
                nonFinite.AddRange(NonFiniteTensor.Scan(file.Path, name, read));
                return read;
            });
            foreach (var t in checkpoint.Tensors)
            {
                if (!used.Contains(t.Name) && !t.Name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)
                    && !(config.TieWordEmbeddings && t.Name == "lm_head.weight"))
                {
                    unexpected.Add($"unexpected tensor '{t.Name}' [{string.Join(", ", t.Info.Shape)}]");
                }
            }

            if (problems.Count + missing.Count + unexpected.Count > 0)
            {
                throw new InvalidDataException($"{folder}: the checkpoint does not match config.json: {ProblemList.CountGroups("problem", problems, missing, unexpected)}.");
            }

            model.SourceFolder = Path.GetFullPath(folder);
            model.NonFiniteTensors = nonFinite;
            return model;
        }
        finally
        {
            foreach (var file in files.Values)
            {
                file.Dispose();
            }
        }
    }

    /// <summary>
    /// Saves config.json + model.safetensors (and the source folder's tokenizer and generation_config files) to
    /// <paramref name="folder"/>, replacing the model files of an earlier model there. 4-bit weights are written
    /// dequantized in their original dtype; LoRA adapters are not part of the base (save them separately or merge first).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="folder"/> is the folder the model was loaded from, is inside it, or holds it.</exception>
    public void Save(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (SourceFolder != null)
        {
            Checkpoint.CheckFolderOutput(SourceFolder, Path.GetFullPath(folder), folder);
        }

        var tensors = new List<SafeTensor>();
        foreach (var (name, p) in NamedParameters())
        {
            if (name.Contains(".lora_", StringComparison.Ordinal) || IsPromptLearningParameter(name) || name.Contains("_adapters.", StringComparison.Ordinal)
                || name.StartsWith(XLoraClassifierName + ".", StringComparison.Ordinal) || name.Contains(".mlp.mixlora.", StringComparison.Ordinal))
            {
                continue;
            }

            tensors.Add(ToSafeTensor(name, p));
        }

        bool anyBf16 = tensors.Any(t => t.DType == SafeTensorDType.BF16);
        bool anyF16 = tensors.Any(t => t.DType == SafeTensorDType.F16);
        bool tied = ReferenceEquals(LmHead.Weight, Model.EmbedTokens.Weight);
        var config = Config with { TorchDtype = anyBf16 ? "bfloat16" : anyF16 ? "float16" : "float32", TieWordEmbeddings = tied };
        using var writer = new CheckpointWriter(folder, ownsFolder: true);
        if (SourceFolder != null)
        {
            foreach (string file in TokenizerFiles.Where(f => File.Exists(Path.Combine(SourceFolder, f))))
            {
                writer.StageCopy(Path.Combine(SourceFolder, file), file);
            }
        }

        writer.StageSafeTensors(Checkpoint.SingleName, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(writer.StagePath("config.json"), ["quantization_config"]);
        writer.Commit();
    }

    /// <summary>
    /// A copy of this base model with its matrices stored as <paramref name="storage"/> says (norms and biases stay fp32;
    /// 4-bit weights are dequantized first). Adapters are not copied.
    /// </summary>
    public LlamaForCausalLM ToStorage(WeightStorage storage)
    {
        var byName = NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        var copy = Build(Config with { TieWordEmbeddings = ReferenceEquals(LmHead.Weight, Model.EmbedTokens.Weight) }, (name, shape) =>
        {
            var p = byName[name];
            if (shape.Length == 2 && storage == WeightStorage.BFloat16)
            {
                if (p.DType == TensorDType.BF16)
                {
                    return new Parameter((ushort[])p.Bf16Bits.Clone(), shape);
                }

                var values = p.ToFloat32();
                var bits = new ushort[values.Length];
                Bf16.FromSingle(values, bits);
                return new Parameter(bits, shape);
            }

            return new Parameter(p.ToFloat32(), shape);
        });
        copy.SourceFolder = SourceFolder;
        return copy;
    }

    /// <summary>
    /// A second model over this one's base parameter objects (nothing copied, no adapters): adapters loaded onto it leave this
    /// model's layers untouched (the engine's adapter registry loads PEFT folders this way while this model serves).
    /// </summary>
    internal LlamaForCausalLM ShareBaseParameters()
    {
        var byName = NamedParameters().ToDictionary(p => p.Name, p => p.Parameter);
        return Build(Config with { TieWordEmbeddings = ReferenceEquals(LmHead.Weight, Model.EmbedTokens.Weight) }, (name, _) => byName[name]);
    }

    private static SafeTensor ToSafeTensor(string name, Parameter p)
    {
        long[] shape = [.. p.Shape.Select(d => (long)d)];
        switch (p.DType)
        {
            case TensorDType.F32:
                return SafeTensor.FromFloat32(name, p.Data, shape);
            case TensorDType.BF16:
                return SafeTensor.FromBf16Bits(name, p.Bf16Bits, shape);
            case TensorDType.F16:
                return SafeTensor.FromHalf(name, p.F16Values, shape);
            default:
                var q = p.Quantized;
                var values = q.Dequantize();
                if (q.DType == "bfloat16")
                {
                    var bits = new ushort[values.Length];
                    Bf16.FromSingle(values, bits);
                    return SafeTensor.FromBf16Bits(name, bits, shape);
                }

                if (q.DType == "float16")
                {
                    var halves = new Half[values.Length];
                    System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(values, halves);
                    return SafeTensor.FromHalf(name, halves, shape);
                }

                return SafeTensor.FromFloat32(name, values, shape);
        }
    }

    /// <summary>A bitsandbytes 4-bit Linear weight (kept 4-bit when loading as stored, else dequantized); its state keys count as used.</summary>
    private static Parameter ReadQuantized(SafeTensorsFile file, string name, int[] shape, WeightStorage storage, HashSet<string> used, List<string> problems)
    {
        var q = Bnb4bitStateDict.FromTensors(file, name);
        foreach (string suffix in new[] { ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map" })
        {
            used.Add(name + suffix);
        }

        used.Add(Bnb4bitStateDict.QuantStateKey(name, q.Type));
        if (!q.Shape.AsSpan().SequenceEqual(shape) || name == "model.embed_tokens.weight")
        {
            problems.Add(name == "model.embed_tokens.weight"
                ? $"tensor '{name}' is 4-bit; embedding tables must be F32, F16 or BF16"
                : $"4-bit tensor '{name}' has shape [{string.Join(", ", q.Shape)}], expected [{string.Join(", ", shape)}]");
            return new Parameter(new float[shape.Aggregate(1L, (a, d) => a * d)], shape);
        }

        if (storage == WeightStorage.AsStored)
        {
            return new Parameter(q);
        }

        var values = q.Dequantize();
        if (storage == WeightStorage.Float32)
        {
            return new Parameter(values, shape);
        }

        var bits = new ushort[values.Length];
        Bf16.FromSingle(values, bits);
        return new Parameter(bits, shape);
    }

    private static Parameter ReadParameter(SafeTensorsFile file, string name, SafeTensorDType dtype, int[] shape, WeightStorage storage)
    {
        bool matrix = shape.Length == 2;
        if (dtype is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
        {
            throw new InvalidDataException($"{file.Path}: tensor '{name}' is {dtype.HeaderName()}; model weights must be F32, F16 or BF16.");
        }

        if (matrix && storage == WeightStorage.AsStored && dtype == SafeTensorDType.F16)
        {
            return new Parameter(file.ReadHalf(name), shape);
        }

        bool keepBf16 = matrix && (storage == WeightStorage.BFloat16 || (storage == WeightStorage.AsStored && dtype == SafeTensorDType.BF16));
        if (keepBf16 && dtype == SafeTensorDType.BF16)
        {
            return new Parameter(file.ReadBf16Bits(name), shape);
        }

        var values = file.ReadFloat32(name);
        if (keepBf16)
        {
            var bits = new ushort[values.Length];
            Bf16.FromSingle(values, bits);
            return new Parameter(bits, shape);
        }

        return new Parameter(values, shape);
    }
}
