// The few protobuf wire-format writes that build a SentencePiece tokenizer.model by hand (the
// fuzz seeds and the tokenizer tests share it): base-128 varints, field tags, and
// length-delimited fields. Wire types: 0 varint, 2 length-delimited, 5 fixed 32-bit.
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
}
