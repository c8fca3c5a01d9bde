global using ILGPU;
global using ILGPU.Runtime;
global using PeftKernels.Kernels.Cpu;
global using ByteView = ILGPU.Runtime.ArrayView1D<byte, ILGPU.Stride1D.Dense>;
global using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;
global using IntView = ILGPU.Runtime.ArrayView1D<int, ILGPU.Stride1D.Dense>;
