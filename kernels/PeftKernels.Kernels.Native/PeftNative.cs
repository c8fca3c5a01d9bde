// libpeftnative.so (native/*.c), loaded once for every native kernel family (NativeBf16, NativeQ4Int8):
// found next to the assemblies (or by the runtime's probing of a NuGet install), its exports looked up by
// name. PEFT_NATIVE=0 in the environment makes the loader report no library (the managed paths everywhere).
// A missing library is not an error: Loaded is false and LibraryStatus says why.
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Native;

/// <summary>The native library of this process, loaded once.</summary>
internal static class PeftNative
{
    /// <summary>File name of the library, next to the assemblies.</summary>
    public const string LibraryName = "libpeftnative.so";

    private static readonly IntPtr Handle;

    static PeftNative()
    {
        if (Environment.GetEnvironmentVariable("PEFT_NATIVE") == "0")
        {
            LibraryStatus = "disabled by PEFT_NATIVE=0";
            return;
        }

        Loaded = TryLoad(out Handle, out string status);
        LibraryStatus = Loaded ? "loaded " + status : status;
    }

    /// <summary>True when the library is loaded.</summary>
    public static bool Loaded { get; }

    /// <summary>"loaded &lt;path&gt;", or why there is no library.</summary>
    public static string LibraryStatus { get; }

    /// <summary>The address of export <paramref name="name"/>, or zero (no library, or no such export).</summary>
    public static IntPtr Export(string name) =>
        Loaded && NativeLibrary.TryGetExport(Handle, name, out var address) ? address : IntPtr.Zero;

    private static bool TryLoad(out IntPtr handle, out string status)
    {
        handle = IntPtr.Zero;
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            status = $"the native kernels are built for Linux x64 only (this is {RuntimeInformation.OSDescription}, {RuntimeInformation.ProcessArchitecture})";
            return false;
        }

        string?[] folders = [AppContext.BaseDirectory, Path.GetDirectoryName(typeof(PeftNative).Assembly.Location)];
        foreach (var folder in folders)
        {
            if (string.IsNullOrEmpty(folder))
            {
                continue;
            }

            string path = Path.Combine(folder, LibraryName);
            if (File.Exists(path) && NativeLibrary.TryLoad(path, out handle))
            {
                status = path;
                return true;
            }
        }

        // A NuGet install puts it under runtimes/linux-x64/native/, which the runtime's own probing (deps.json) finds.
        if (NativeLibrary.TryLoad(LibraryName, typeof(PeftNative).Assembly, null, out handle))
        {
            status = LibraryName + " (runtime probing)";
            return true;
        }

        status = $"{LibraryName} was not found next to the assemblies in {AppContext.BaseDirectory} (built only when a C compiler was on PATH)";
        return false;
    }
}
