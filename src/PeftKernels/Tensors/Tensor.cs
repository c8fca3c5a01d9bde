// A dense row-major tensor. Activations, gradients and trainable parameters are fp32; frozen
// base weights may stay bf16, fp16 or 4-bit (QuantizedWeight) and are only ever read by kernels
// that widen or dequantize them on the fly. A tensor that requires grad gets an fp32 Grad
// buffer of its own size when backward first reaches it.
// Devices: a tensor made by a GPU op lives on its accelerator only (immutable once written);
// reading Data downloads it once and keeps the host copy. A host tensor (a parameter, say)
// can carry a device mirror made once by To(device) / Module.To(device): bf16 and fp16 are widened to
// fp32 and 4-bit is uploaded packed (Quant4Buffers); the host copy stays the original.
// Training on a device: a mirrored fp32 parameter accumulates its gradient in a device buffer
// (Grad downloads it lazily, for host readers), and an optimizer that steps the mirror marks the
// host copy stale (Data downloads it on the next read), so the device copy is authoritative.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels;

/// <summary>A dense row-major tensor: fp32, bf16, fp16 or 4-bit storage, with an optional gradient.</summary>
public partial class Tensor
{
    private float[]? data;
    private DeviceArray<float>? deviceData;
    private DeviceArray<float>? deviceGrad;
    private bool released;
    private float[]? grad;
    private bool hostGradStale;
    private bool hostDataStale;

    [ThreadStatic]
    private static int gradDownloads;
    private Quant4Buffers? deviceQuant;
    private readonly ushort[]? bf16;
    private readonly QuantizedWeight? quantized;
    private readonly Half[]? f16;

    /// <summary>An fp32 tensor over <paramref name="data"/> (not copied).</summary>
    public Tensor(float[] data, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(data);
        Shape = CheckShape(shape, data.LongLength, "data");
        this.data = data;
        DType = TensorDType.F32;
    }

    /// <summary>A bf16 tensor over the bit patterns <paramref name="bits"/> (not copied).</summary>
    public Tensor(ushort[] bits, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(bits);
        Shape = CheckShape(shape, bits.LongLength, "bits");
        bf16 = bits;
        DType = TensorDType.BF16;
    }

    /// <summary>An fp16 tensor over <paramref name="values"/> (not copied).</summary>
    public Tensor(Half[] values, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(values);
        Shape = CheckShape(shape, values.LongLength, "values");
        f16 = values;
        DType = TensorDType.F16;
    }

    /// <summary>A 4-bit tensor over a quantized weight (its shape is the weight's shape).</summary>
    public Tensor(QuantizedWeight weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        Shape = (int[])weight.Shape.Clone();
        quantized = weight;
        DType = TensorDType.Q4;
    }

    /// <summary>
    /// An fp32 tensor living on <paramref name="device"/> over <paramref name="buffer"/> (owned; a pooled array). Inside a
    /// <see cref="DeviceScope"/> it is registered there and hands its memory back when the scope ends.
    /// </summary>
    internal Tensor(Device device, DeviceArray<float> buffer, int[] shape)
    {
        Shape = CheckShape(shape, buffer.Length, "buffer");
        deviceData = buffer;
        Device = device;
        DType = TensorDType.F32;
        LivesOnDeviceOnly = true;
        DeviceScope.Register(this);
    }

    /// <summary>Where the tensor's data (or its device mirror) lives; CPU unless moved.</summary>
    public Device Device { get; private set; } = Device.Cpu;

    /// <summary>The dimensions, outermost first.</summary>
    public int[] Shape { get; }

    /// <summary>The storage type.</summary>
    public TensorDType DType { get; }

    /// <summary>Number of elements.</summary>
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>The last dimension (1 for a scalar).</summary>
    public int Columns => Shape.Length == 0 ? 1 : Shape[^1];

    /// <summary>Elements divided by the last dimension.</summary>
    public int Rows => Columns == 0 ? 0 : (int)(Count / Columns);

    /// <summary>fp32 storage; throws for bf16 and 4-bit tensors.</summary>
    /// <remarks>For a tensor made on an accelerator, the first read synchronizes and downloads it.</remarks>
    /// A parameter whose device mirror an optimizer updated downloads it again on the next read.
    /// Every read counts as a possible write (<see cref="MarkChanged"/>): kept bf16 panels of the tensor are dropped.
    public float[] Data
    {
        get
        {
            MarkChanged();
            return ReadData();
        }
    }

    /// <summary>bf16 bit patterns; throws unless the tensor is bf16.</summary>
    /// <remarks>Every read counts as a possible write (<see cref="MarkChanged"/>): kept bf16 panels of the tensor are dropped.</remarks>
    public ushort[] Bf16Bits
    {
        get
        {
            MarkChanged();
            return bf16 ?? throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] is {DType}, not BF16.");
        }
    }

    /// <summary>fp16 values; throws unless the tensor is fp16.</summary>
    /// <remarks>Every read counts as a possible write (<see cref="MarkChanged"/>): kept bf16 panels of the tensor are dropped.</remarks>
    public Half[] F16Values
    {
        get
        {
            MarkChanged();
            return f16 ?? throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] is {DType}, not F16.");
        }
    }

    /// <summary>The quantized weight; throws unless the tensor is 4-bit.</summary>
    public QuantizedWeight Quantized => quantized ?? throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] is {DType}, not Q4.");

    /// <summary>Gradient of the last backward pass(es), accumulated; null until backward reaches this tensor.</summary>
    /// <remarks>
    /// A parameter with a device mirror keeps its gradient on the device: reading Grad downloads a host copy (once per
    /// change), which is a snapshot: writing into it does not change the device gradient. Setting Grad replaces the
    /// gradient (the device one is freed).
    /// </remarks>
    public float[]? Grad
    {
        get
        {
            if (hostGradStale && deviceGrad != null)
            {
                if (grad == null || grad.LongLength != deviceGrad.Length)
                {
                    grad = new float[deviceGrad.Length];
                }

                DeviceSync.Download(deviceGrad.View, grad);
                hostGradStale = false;
                gradDownloads++;
            }

            return grad;
        }

        set
        {
            grad = value;
            hostGradStale = false;
            if (!LivesOnDeviceOnly)
            {
                deviceGrad?.Dispose();
                deviceGrad = null;
            }
        }
    }

    /// <summary>Host downloads of device gradients made by <see cref="Grad"/> on this thread (tests check that training downloads none).</summary>
    internal static int GradDownloads => gradDownloads;

    /// <summary>True when backward computes a gradient for this tensor.</summary>
    public bool RequiresGrad { get; internal set; }

    /// <summary>True for a tensor made by a GPU op (no host original); its gradient stays on the device.</summary>
    internal bool LivesOnDeviceOnly { get; }

    /// <summary>True when backward has reached this tensor (a host Grad or a device gradient).</summary>
    internal bool HasGrad => grad != null || deviceGrad != null;

    /// <summary>
    /// The device gradient of a device-only tensor or of a parameter with a device mirror (a host gradient given to it is
    /// uploaded first); empty until backward reaches it.
    /// </summary>
    internal ArrayView1D<float, Stride1D.Dense> DeviceGrad
    {
        get
        {
            if (deviceGrad == null && grad != null && (LivesOnDeviceOnly || HasMirror))
            {
                deviceGrad = DeviceMemoryPool.Of(Device.Accelerator).Upload<float>(grad);
            }

            return deviceGrad?.View ?? default;
        }
    }

    /// <summary>True for a host fp32 tensor with an fp32 mirror on an accelerator (a parameter of a model moved there).</summary>
    internal bool HasMirror => deviceData != null && !LivesOnDeviceOnly;

    /// <summary>True when the tensor holds its gradient in a device buffer.</summary>
    internal bool HasDeviceGrad => deviceGrad != null;

    /// <summary>Bytes of storage (not counting the gradient).</summary>
    public long ByteSize => DType switch
    {
        TensorDType.F32 => Count * 4,
        TensorDType.BF16 or TensorDType.F16 => Count * 2,
        _ => Quantized.ByteSize,
    };

    /// <summary>A zero-filled fp32 tensor.</summary>
    public static Tensor Zeros(params int[] shape) => new(new float[CheckShape(shape, -1, "shape").Aggregate(1L, (a, d) => a * d)], shape);

    /// <summary>The value of a one-element fp32 tensor.</summary>
    public float Item() => Count == 1 ? Data[0] : throw new InvalidOperationException($"Item() needs one element; tensor has shape [{string.Join(", ", Shape)}].");

    /// <summary>The values as fp32 (a copy, widened or dequantized as needed).</summary>
    public float[] ToFloat32()
    {
        switch (DType)
        {
            case TensorDType.F32:
                return (float[])Data.Clone();
            case TensorDType.BF16:
                var result = new float[Count];
                for (long i = 0; i < result.LongLength; i++)
                {
                    result[i] = Bf16.ToSingle(bf16![i]);
                }

                return result;
            case TensorDType.F16:
                var widened = new float[Count];
                System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(f16, widened);
                return widened;
            default:
                return Quantized.Dequantize();
        }
    }

    /// <summary>
    /// This tensor on <paramref name="device"/>: itself when it is there already, else a new tensor (no gradient) whose data
    /// is there (uploaded to the GPU as fp32, or 4-bit packed; on the CPU it shares this tensor's host storage, downloading it
    /// first when the tensor lives on an accelerator only).
    /// </summary>
    public Tensor To(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (ReferenceEquals(device, Device))
        {
            return this;
        }

        var copy = DType switch
        {
            TensorDType.F32 => new Tensor(Data, Shape),
            TensorDType.BF16 => new Tensor(bf16!, Shape),
            TensorDType.F16 => new Tensor(f16!, Shape),
            _ => new Tensor(quantized!),
        };
        copy.MoveTo(device);
        return copy;
    }

    /// <summary>Runs backward from this scalar: see <see cref="Autograd.Tape.Backward(Tensor)"/>.</summary>
    public void Backward() => Autograd.Tape.Backward(this);

    /// <summary>The gradient buffer, created zero-filled on first use.</summary>
    internal float[] GradOrCreate() => Grad ??= new float[Count];

    /// <summary>
    /// Gives a host tensor a mirror on <paramref name="device"/> (uploaded now, once), or drops the mirror for the CPU.
    /// A tensor that lives only on an accelerator cannot move this way.
    /// </summary>
    internal void MoveTo(Device device)
    {
        if (ReferenceEquals(device, Device))
        {
            return;
        }

        if (data == null && bf16 == null && f16 == null && quantized == null)
        {
            throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] lives on {Device} only; use To(device) for a copy.");
        }

        if (hostDataStale)
        {
            DownloadMirror();
        }

        if (deviceGrad != null && !LivesOnDeviceOnly)
        {
            // Leaving the device: the gradient comes along to the host.
            var host = Grad;
            Grad = host;
        }

        deviceData?.Dispose();
        deviceQuant?.Dispose();
        deviceData = null;
        deviceQuant = null;
        Device = device;
        if (!device.IsGpu)
        {
            return;
        }

        var accelerator = device.Accelerator;
        if (DType == TensorDType.Q4)
        {
            deviceQuant = Quant4Buffers.Upload(accelerator, quantized!);
        }
        else
        {
            deviceData = DeviceMemoryPool.Of(accelerator).Upload<float>(DType == TensorDType.F32 ? data! : ToFloat32());
        }
    }

    /// <summary>Adds <paramref name="owned"/> (a gradient buffer on this tensor's device, handed over) to the device gradient.</summary>
    internal void AddDeviceGrad(DeviceArray<float> owned)
    {
        var current = DeviceGrad;
        hostGradStale = !LivesOnDeviceOnly;
        if (deviceGrad == null)
        {
            deviceGrad = owned;
            return;
        }

        AddKernels.Forward(Device.Accelerator, current, owned.View, current);
        owned.Dispose(); // back to the pool; the stream orders its next user after the add
    }

    /// <summary>Records that the device gradient was changed in place (clipping), so the host copy must be downloaded again.</summary>
    internal void MarkDeviceGradChanged() => hostGradStale = deviceGrad != null && !LivesOnDeviceOnly;

    /// <summary>Drops the gradient (host and device; the device buffer is freed): an intermediate once backward passed it, or a parameter's ZeroGrad on a device.</summary>
    internal void DropGrad()
    {
        grad = null;
        hostGradStale = false;
        deviceGrad?.Dispose();
        deviceGrad = null;
    }

    /// <summary>
    /// Copies the host fp32 data into the device mirror again (after the optimizer or a merge changed it on the host);
    /// nothing when the device copy is the newer one (the host copy is stale and was not read since).
    /// </summary>
    internal void RefreshMirror()
    {
        if (HasMirror && DType == TensorDType.F32 && !hostDataStale)
        {
            DeviceSync.Upload<float>(deviceData!.View, data!);
        }
    }

    /// <summary>Records that the device mirror was updated in place (an optimizer step on the device): the host copy is downloaded on its next read.</summary>
    internal void MarkMirrorChanged()
    {
        hostDataStale = HasMirror;
        MarkChanged();
    }

    /// <summary>The fp32 data on <paramref name="device"/> (an accelerator); throws when the tensor is not there.</summary>
    internal ArrayView1D<float, Stride1D.Dense> View(Device device) =>
        ReferenceEquals(device, Device) && deviceData != null ? deviceData.View
            : released ? throw ReleasedError()
            : throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] ({DType}) is on {Device}, not {device}: move the model and inputs with To({device.Name}) first.");

    /// <summary>
    /// Hands this device-only tensor's memory (data and gradient) back to the pool: its <see cref="DeviceScope"/> ended.
    /// A host copy already downloaded stays readable; anything else throws a clear error from now on.
    /// </summary>
    internal void ReleaseDevice()
    {
        if (!LivesOnDeviceOnly || released)
        {
            return;
        }

        released = true;
        deviceData?.Dispose();
        deviceData = null;
        deviceGrad?.Dispose();
        deviceGrad = null;
    }

    /// <summary>The 4-bit weight on <paramref name="device"/>; throws when the tensor is not there.</summary>
    internal Quant4View QuantView(Device device) =>
        ReferenceEquals(device, Device) && deviceQuant != null ? deviceQuant.View
            : throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] ({DType}) is on {Device}, not {device}: move the model with To({device.Name}) first.");

    /// <inheritdoc/>
    public override string ToString() => $"Tensor({DType}, [{string.Join(", ", Shape)}])";

    /// <summary>The fp32 storage without counting a change (the library's own read-only uses: the weight operand).</summary>
    private float[] ReadData() =>
        (hostDataStale ? DownloadMirror() : data) ?? Download() ?? throw new InvalidOperationException($"tensor [{string.Join(", ", Shape)}] is {DType}, not F32.");

    private float[] DownloadMirror()
    {
        DeviceSync.Download(deviceData!.View, data!);
        hostDataStale = false;
        return data!;
    }

    private float[]? Download()
    {
        // Only an fp32 tensor made on a device (no host original) downloads here; a bf16 / fp16 / 4-bit tensor's device copy
        // is a widened or packed mirror of its host storage, never its fp32 Data.
        if (released)
        {
            throw ReleasedError();
        }

        if (deviceData == null || DType != TensorDType.F32)
        {
            return null;
        }

        data = DeviceSync.Download(deviceData.View);
        return data;
    }

    private InvalidOperationException ReleasedError() =>
        new($"tensor [{string.Join(", ", Shape)}] was made on {Device} inside a DeviceScope and its memory went back to the pool when the scope ended; "
            + "read it inside the scope, or call scope.Keep(tensor) to take it out of the scope.");

    private static int[] CheckShape(int[] shape, long length, string what)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (shape.Any(d => d < 0))
        {
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] has a negative dimension.", nameof(shape));
        }

        long count = shape.Aggregate(1L, (a, d) => a * d);
        if (length >= 0 && count != length)
        {
            throw new ArgumentException($"{what} has {length} elements but shape [{string.Join(", ", shape)}] needs {count}.", what);
        }

        return (int[])shape.Clone();
    }
}
