// The block rules of 4-bit blockwise quantization (bitsandbytes layout, docs/formats/4bit-formats.md):
// a tensor of count elements is cut into ⌈count / blocksize⌉ blocks with one absmax each; the block
// size is a power of two in [32, 4096]; double quantization cuts the absmax array itself into blocks
// of 256. Shared by the CPU quantizer (Quant4) and the GPU 4-bit kernels.
namespace PeftKernels.Kernels;

/// <summary>Block-size rules of NF4/FP4 blockwise quantization.</summary>
public static class Quant4Blocks
{
    /// <summary>The block size of the nested (double) quantization of the absmax.</summary>
    public const int NestedBlocksize = 256;

    /// <summary>True for the block sizes bitsandbytes allows: 32, 64, …, 4096.</summary>
    public static bool IsValidBlocksize(int blocksize) => blocksize is >= 32 and <= 4096 && (blocksize & (blocksize - 1)) == 0;

    /// <summary>Blocks of a tensor of <paramref name="count"/> elements.</summary>
    public static int BlockCount(long count, int blocksize) => (int)((count + blocksize - 1) / blocksize);
}
