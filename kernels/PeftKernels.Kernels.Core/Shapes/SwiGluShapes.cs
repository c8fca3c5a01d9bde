// Shape checks of SwiGLU y = silu(gate)·up (element-wise), called by the CPU kernel (SwiGlu) and the
// GPU launcher (SwiGluKernels): every operand has as many elements as gate (forward) or dy (backward).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of SwiGLU, shared by the CPU kernel and the GPU launcher.</summary>
internal static class SwiGluShapes
{
    public static void Forward(long gate, long up, long y)
    {
        Check.Length("up", up, gate, "gate.Length");
        Check.Length("y", y, gate, "gate.Length");
    }

    public static void Backward(long dy, long gate, long up, long dgate, long dup)
    {
        Check.Length("gate", gate, dy, "dy.Length");
        Check.Length("up", up, dy, "dy.Length");
        Check.Length("dgate", dgate, dy, "dy.Length");
        Check.Length("dup", dup, dy, "dy.Length");
    }
}
