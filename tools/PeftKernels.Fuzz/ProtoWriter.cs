// The few protobuf wire-format writes that build a SentencePiece tokenizer.model by hand (the
// fuzz seeds and the tokenizer tests share it): base-128 varints, field tags, and
// length-delimited fields, and the ModelProto itself (pieces, trainer spec, normalizer spec). Wire
// types: 0 varint, 2 length-delimited, 5 fixed 32-bit.
using System.Text;

namespace PeftKernels.Fuzz;

/// <summary>Appends protobuf wire-format fields to a byte list.</summary>
internal static class ProtoWriter
{
    /// <summary>An unsigned base-128 varint.</summary>
    public static void Raw(List<byte> o, ulong v)
    {
        for (; v >= 0x80; v >>= 7)
        {
            o.Add((byte)(v | 0x80));
        }

        o.Add((byte)v);
    }

    /// <summary>A field tag: (field number &lt;&lt; 3) | wire type.</summary>
    public static void Tag(List<byte> o, int field, int wireType) => Raw(o, (ulong)((field << 3) | wireType));

    /// <summary>A varint field (wire type 0).</summary>
    public static void Varint(List<byte> o, int field, long value)
    {
        Tag(o, field, 0);
        Raw(o, (ulong)value);
    }

    /// <summary>A length-delimited field (wire type 2): bytes, a string or a nested message.</summary>
    public static void Bytes(List<byte> o, int field, byte[] value)
    {
        Tag(o, field, 2);
        Raw(o, (ulong)value.Length);
        o.AddRange(value);
    }

    /// <summary>
    /// A SentencePiece ModelProto: field 1 one SentencePiece (piece, score, type) per entry, field 2 the TrainerSpec with
    /// model_type (3), vocab_size (4) and <paramref name="trainer"/>'s further varint fields, field 3 a NormalizerSpec named
    /// "identity" with <paramref name="normalizer"/>'s varint fields.
    /// </summary>
    public static byte[] SentencePieceModel(IReadOnlyList<(string Piece, float Score, int Type)> pieces, int modelType,
        IEnumerable<(int Field, long Value)> trainer, IEnumerable<(int Field, long Value)> normalizer)
    {
        var model = new List<byte>();
        foreach (var (piece, score, type) in pieces)
        {
            var message = new List<byte>();
            Bytes(message, 1, Encoding.UTF8.GetBytes(piece));
            Tag(message, 2, 5);
            message.AddRange(BitConverter.GetBytes(score));
            Varint(message, 3, type);
            Bytes(model, 1, [.. message]);
        }

        var trainerSpec = new List<byte>();
        Varint(trainerSpec, 3, modelType);
        Varint(trainerSpec, 4, pieces.Count);
        foreach (var (field, value) in trainer)
        {
            Varint(trainerSpec, field, value);
        }

        Bytes(model, 2, [.. trainerSpec]);
        var normalizerSpec = new List<byte>();
        Bytes(normalizerSpec, 1, "identity"u8.ToArray());
        foreach (var (field, value) in normalizer)
        {
            Varint(normalizerSpec, field, value);
        }

        Bytes(model, 3, [.. normalizerSpec]);
        return [.. model];
    }
}
