// The seed inputs the fuzz corpora started from (`PeftKernels.Fuzz --write-seeds DIR` writes
// DIR/<target>/seed-*): small valid files of each format, written with the library's own writers
// where it has one. afl-fuzz grew the corpora from these; afl-cmin and afl-tmin minimized them.
using PeftKernels.IO;
using PeftKernels.Kernels;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Quantization;
using static PeftKernels.Fuzz.ProtoWriter;

namespace PeftKernels.Fuzz;

/// <summary>Writes small valid inputs for every fuzz target.</summary>
public static class SeedInputs
{
    /// <summary>Writes the seeds of every target under <paramref name="root"/>/&lt;target&gt;/.</summary>
    public static void Write(string root)
    {
        string Folder(string target) => Directory.CreateDirectory(Path.Combine(root, target)).FullName;

        string st = Folder(FuzzTargets.SafeTensors);
        SafeTensorsWriter.Write(Path.Combine(st, "seed-f32"), [SafeTensor.FromFloat32("w", [1f, -2f, 0.5f, 3f], 2, 2), SafeTensor.FromUInt8("b", [1, 2, 3], 3)],
            new Dictionary<string, string> { ["format"] = "pt" });
        SafeTensorsWriter.Write(Path.Combine(st, "seed-half"), [SafeTensor.FromHalf("h", [(Half)1, (Half)(-1)], 2), SafeTensor.FromBf16Bits("g", [0x3F80], 1, 1)]);

        string config = Folder(FuzzTargets.ConfigJson);
        LlamaConfig.Tiny().Save(Path.Combine(config, "seed-tiny"));
        File.WriteAllText(Path.Combine(config, "seed-llama3"), """
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 300, "bos_token_id": 1, "eos_token_id": [2, 3],
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64, "rope_type": "llama3"},
             "model_type": "llama", "torch_dtype": "bfloat16", "tie_word_embeddings": true, "rms_norm_eps": 1e-05, "rope_theta": 500000.0}
            """);

        string adapter = Folder(FuzzTargets.AdapterConfig);
        new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = TargetModules.FromList("q_proj", "v_proj") }.Save(Path.Combine(adapter, "seed-lora"));
        new Ia3Config().Save(Path.Combine(adapter, "seed-ia3"));
        File.WriteAllText(Path.Combine(adapter, "seed-patterns"), """
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ".*\\.(q|v)_proj", "layers_to_transform": [0, 1],
             "layers_pattern": "layers", "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"v_proj": 2.5}, "modules_to_save": ["lm_head"],
             "init_lora_weights": "gaussian", "use_dora": true, "use_rslora": true}
            """);

        string bnb = Folder(FuzzTargets.BnbState);
        float[] values = [.. Enumerable.Range(0, 128).Select(i => MathF.Sin(i))];
        foreach (var (name, weight) in new[]
        {
            ("seed-nf4-nested", QuantizedWeight.Quantize(values, [4, 32], Quant4Type.Nf4, blocksize: 64, doubleQuant: true)),
            ("seed-fp4", QuantizedWeight.Quantize(values, [2, 64], Quant4Type.Fp4, blocksize: 32, doubleQuant: false)),
        })
        {
            // The quant state is the last tensor ToTensors returns: the UTF-8 bytes of its JSON.
            File.WriteAllBytes(Path.Combine(bnb, name), Bnb4bitStateDict.ToTensors("w.weight", weight)[^1].Data.ToArray());
        }

        File.WriteAllText(Path.Combine(Folder(FuzzTargets.TokenizerJson), "seed-bpe"), TokenizerJsonSeed);
        File.WriteAllBytes(Path.Combine(Folder(FuzzTargets.TokenizerModel), "seed-sentencepiece"), SentencePieceSeed());
    }

    private const string TokenizerJsonSeed = """
        {"version": "1.0", "added_tokens": [{"id": 9, "content": "<|end|>", "special": true}],
         "normalizer": {"type": "NFC"},
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
           {"type": "Split", "pattern": {"Regex": "\\s?\\p{L}+|\\s?\\p{N}+|\\s+"}, "behavior": "Isolated", "invert": false},
           {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
         "decoder": {"type": "ByteLevel"},
         "model": {"type": "BPE", "ignore_merges": true, "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "he": 5, "ll": 6, "hell": 7, "hello": 8},
                   "merges": ["h e", ["l", "l"], "he ll", "hell o"]}}
        """;

    /// <summary>A SentencePiece ModelProto written field by field (pieces: 1 piece, 2 score, 3 type; trainer_spec; normalizer_spec).</summary>
    private static byte[] SentencePieceSeed()
    {
        (string Piece, float Score, int Type)[] pieces =
        [
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), .. Enumerable.Range(0, 256).Select(b => ($"<0x{b:X2}>", 0f, 6)),
            ("▁", -1, 1), ("h", -2, 1), ("e", -3, 1), ("l", -4, 1), ("o", -5, 1), ("▁hello", -6, 1),
        ];
        return SentencePieceModel(pieces, 2, [(35, 1), (40, 0), (41, 1), (42, 2)], [(3, 1), (5, 1)]);
    }
}
