// The state-dict keys of a bitsandbytes Linear4bit weight (docs/formats/4bit-formats.md#state-dict-layout), for a
// module whose weight key is P.weight, in the order Linear4bit._save_to_state_dict emits them:
//   P.weight                                   U8  [(n+1)/2, 1]   packed codes
//   P.weight.absmax                            F32 [blocks]       (U8 codes when nested)
//   P.weight.quant_map                         F32 [16]           NF4/FP4 table
//   P.weight.nested_absmax                     F32 [ceil(blocks/256)]   nested only
//   P.weight.nested_quant_map                  F32 [256]          dynamic map, nested only
//   P.weight.quant_state.bitsandbytes__nf4|fp4 U8  [len]          JSON (BnbQuantState.cs)
// with n = prod(shape) and blocks = ceil(n / blocksize). Reading checks every key, dtype,
// element count and code table against the JSON before building the QuantizedWeight.
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Quantization;

/// <summary>Converts a <see cref="QuantizedWeight"/> to and from bitsandbytes' Linear4bit safetensors keys.</summary>
public static class Bnb4bitStateDict
{
    /// <summary>The key of the JSON quant state: <c>{weightKey}.quant_state.bitsandbytes__nf4</c> (or <c>__fp4</c>).</summary>
    public static string QuantStateKey(string weightKey, Quant4Type type) =>
        $"{weightKey}.quant_state.bitsandbytes__{BnbQuantState.TypeName(type)}";

    /// <summary>The tensors bitsandbytes stores for a 4-bit weight saved under <paramref name="weightKey"/>, in its order.</summary>
    /// <exception cref="ArgumentException">Empty key, or a dtype other than float32, bfloat16 or float16.</exception>
    public static IReadOnlyList<SafeTensor> ToTensors(string weightKey, QuantizedWeight weight)
    {
        ArgumentException.ThrowIfNullOrEmpty(weightKey);
        ArgumentNullException.ThrowIfNull(weight);
        if (!BnbQuantState.DTypes.Contains(weight.DType))
        {
            throw new ArgumentException(
                $"'{weightKey}' has dtype \"{weight.DType}\"; bitsandbytes 4-bit weights are {string.Join(", ", BnbQuantState.DTypes)}.", nameof(weight));
        }

        var state = new BnbQuantState(weight.Type, weight.Blocksize, weight.DType, weight.Shape, weight.IsNested ? weight.NestedOffset : null);
        byte[] json = state.ToUtf8();
        var tensors = new List<SafeTensor>
        {
            SafeTensor.FromUInt8(weightKey, weight.Packed, weight.Packed.Length, 1),
            weight.IsNested
                ? SafeTensor.FromUInt8($"{weightKey}.absmax", weight.NestedCodes!, weight.NestedCodes!.Length)
                : SafeTensor.FromFloat32($"{weightKey}.absmax", weight.Absmax, weight.Absmax!.Length),
            SafeTensor.FromFloat32($"{weightKey}.quant_map", Quant4Codes.Table(weight.Type), 16),
        };
        if (weight.IsNested)
        {
            tensors.Add(SafeTensor.FromFloat32($"{weightKey}.nested_absmax", weight.NestedAbsmax, weight.NestedAbsmax!.Length));
            tensors.Add(SafeTensor.FromFloat32($"{weightKey}.nested_quant_map", Quant4Codes.Dynamic, Quant4Codes.Dynamic.Length));
        }

        tensors.Add(SafeTensor.FromUInt8(QuantStateKey(weightKey, weight.Type), json, json.Length));
        return tensors;
    }

    /// <summary>True when <paramref name="file"/> holds a bitsandbytes 4-bit quant state for <paramref name="weightKey"/>.</summary>
    public static bool IsQuantized(SafeTensorsFile file, string weightKey)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(weightKey);
        return file.Contains(QuantStateKey(weightKey, Quant4Type.Nf4)) || file.Contains(QuantStateKey(weightKey, Quant4Type.Fp4));
    }

    /// <summary>Reads and validates the 4-bit weight stored under <paramref name="weightKey"/>.</summary>
    /// <exception cref="InvalidDataException">A key is missing or inconsistent; the message names the file and the key.</exception>
    public static QuantizedWeight FromTensors(SafeTensorsFile file, string weightKey)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentException.ThrowIfNullOrEmpty(weightKey);
        string nf4Key = QuantStateKey(weightKey, Quant4Type.Nf4), fp4Key = QuantStateKey(weightKey, Quant4Type.Fp4);
        bool hasNf4 = file.Contains(nf4Key), hasFp4 = file.Contains(fp4Key);
        if (hasNf4 == hasFp4)
        {
            throw new InvalidDataException(hasNf4
                ? $"{file.Path}: '{weightKey}' has both '{nf4Key}' and '{fp4Key}'; expected exactly one quant state."
                : $"{file.Path}: '{weightKey}' is not a bitsandbytes 4-bit weight: missing key '{nf4Key}' (or '{fp4Key}').");
        }

        var suffixType = hasNf4 ? Quant4Type.Nf4 : Quant4Type.Fp4;
        string stateKey = hasNf4 ? nf4Key : fp4Key;
        var stateDType = file.GetInfo(stateKey).DType;
        if (stateDType != SafeTensorDType.U8)
        {
            throw new InvalidDataException($"{file.Path}: '{stateKey}' is {stateDType.HeaderName()}; expected U8 (the UTF-8 bytes of a JSON object).");
        }

        var state = BnbQuantState.Parse(file.GetBytes(stateKey), $"{file.Path}: '{stateKey}'");
        if (state.Type != suffixType)
        {
            throw new InvalidDataException(
                $"{file.Path}: '{stateKey}' says quant_type \"{BnbQuantState.TypeName(state.Type)}\" but its key ends in __{BnbQuantState.TypeName(suffixType)}.");
        }

        bool nested = state.NestedOffset != null;
        string packedKey = weightKey, absmaxKey = $"{weightKey}.absmax", mapKey = $"{weightKey}.quant_map";
        string nestedAbsmaxKey = $"{weightKey}.nested_absmax", nestedMapKey = $"{weightKey}.nested_quant_map";
        string[] required = nested ? [packedKey, absmaxKey, mapKey, nestedAbsmaxKey, nestedMapKey] : [packedKey, absmaxKey, mapKey];
        string[] missing = [.. required.Where(k => !file.Contains(k))];
        if (missing.Length > 0)
        {
            throw new InvalidDataException($"{file.Path}: the 4-bit weight '{weightKey}' lacks the key(s) {string.Join(", ", missing.Select(k => $"'{k}'"))}"
                + (nested ? " (its quant state is double-quantized)." : "."));
        }

        string[] stray = nested ? [] : [.. new[] { nestedAbsmaxKey, nestedMapKey }.Where(file.Contains)];
        if (stray.Length > 0)
        {
            throw new InvalidDataException($"{file.Path}: '{stateKey}' has no nested_* fields but the file has {string.Join(", ", stray.Select(k => $"'{k}'"))}; "
                + "double-quantization keys are partly missing.");
        }

        long count = state.Shape.Aggregate(1L, (a, d) => a * d);
        int blocks = Quant4.BlockCount(count, state.Blocksize);
        string shapeText = $"shape [{string.Join(", ", state.Shape)}]";
        Expect(file, packedKey, SafeTensorDType.U8, (count + 1) / 2, $"(prod({shapeText}) + 1) / 2");
        Expect(file, absmaxKey, nested ? SafeTensorDType.U8 : SafeTensorDType.F32, blocks, $"ceil({count} / blocksize {state.Blocksize})");
        Expect(file, mapKey, SafeTensorDType.F32, 16, "the 4-bit code table");
        ExpectTable(file, mapKey, Quant4Codes.Table(state.Type), BnbQuantState.TypeName(state.Type).ToUpperInvariant());
        byte[] packed = file.ReadBytes(packedKey);
        if (!nested)
        {
            return new QuantizedWeight(packed, file.ReadFloat32(absmaxKey), null, null, 0f, state.Blocksize, state.Type, state.Shape, state.DType);
        }

        Expect(file, nestedAbsmaxKey, SafeTensorDType.F32, Quant4.BlockCount(blocks, Quant4.NestedBlocksize), $"ceil({blocks} blocks / 256)");
        Expect(file, nestedMapKey, SafeTensorDType.F32, 256, "the 8-bit dynamic map");
        ExpectTable(file, nestedMapKey, Quant4Codes.Dynamic, "dynamic");
        return new QuantizedWeight(packed, null, file.ReadBytes(absmaxKey), file.ReadFloat32(nestedAbsmaxKey), state.NestedOffset!.Value,
            state.Blocksize, state.Type, state.Shape, state.DType);
    }

    private static void Expect(SafeTensorsFile file, string key, SafeTensorDType dtype, long count, string formula)
    {
        var info = file.GetInfo(key);
        if (info.DType != dtype || info.ElementCount != count)
        {
            throw new InvalidDataException($"{file.Path}: '{key}' is {info.DType.HeaderName()} shape [{string.Join(", ", info.Shape)}]; "
                + $"expected {dtype.HeaderName()} with {count} elements ({formula}).");
        }
    }

    private static void ExpectTable(SafeTensorsFile file, string key, ReadOnlySpan<float> table, string tableName)
    {
        float[] stored = file.ReadFloat32(key);
        for (int i = 0; i < table.Length; i++)
        {
            if (stored[i] != table[i])
            {
                throw new InvalidDataException($"{file.Path}: '{key}'[{i}] is {stored[i]:R}; the {tableName} table has {table[i]:R} there.");
            }
        }
    }
}
