// The MPI communicator: a small function-pointer binding (NativeLibrary, no package) over MPI_Init_thread,
// MPI_Comm_rank, MPI_Comm_size, MPI_Allgather, MPI_Barrier, MPI_Abort and MPI_Finalize of
// MPI_COMM_WORLD. Every call runs on the communicator's own thread (CommThread; MPI_THREAD_FUNNELED).
// AllReduceSum = MPI_Allgather of every rank's vector, then RankOrder.Sum of the gathered vectors:
// MPI_Allreduce may sum in any tree order, the gather makes the sum the same bits as one process's.
// It moves Size× the vector per rank (a ring all-reduce moves 2×): for adapters' gradients (a few MB)
// the latency dominates, not the volume.
// Two ABIs: MPICH (libmpich.so.12) passes handles as ints (MPI_COMM_WORLD = 0x44000000, MPI_FLOAT =
// 0x4c00040a); OpenMPI (libmpi.so.40) as pointers to its exported ompi_mpi_comm_world / ompi_mpi_float
// objects. Both go through nint parameters: on x86-64 and arm64 an int argument lives in the low 32
// bits of the same register or stack slot, so one signature serves both.
// World size check: a launcher of another MPI starts N singletons that each see size 1; the
// launcher's environment (PMI_SIZE for MPICH's Hydra, OMPI_COMM_WORLD_SIZE for OpenMPI) says N, so a
// mismatch is refused instead of training N copies silently.
using System.Globalization;
using System.Runtime.InteropServices;

namespace PeftKernels.Distributed;

/// <summary>An all-reduce over MPI_COMM_WORLD (MPICH or OpenMPI, loaded at run time); start the processes with the MPI's own launcher.</summary>
public sealed unsafe class MpiAllReduce : IAllReduce
{
    /// <summary>The environment variable that names the MPI library to load (a file name or a path), overriding the search.</summary>
    public const string LibraryVariable = "PEFT_MPI_LIBRARY";

    private const int ThreadFunneled = 1;
    private const int Success = 0;

    private readonly CommThread comm;
    private nint library;
    private nint world;
    private nint floatType;
    private delegate* unmanaged<int*, nint, int, int*, int> initThread;
    private delegate* unmanaged<nint, int*, int> commRank;
    private delegate* unmanaged<nint, int*, int> commSize;
    private delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int> allgather;
    private delegate* unmanaged<nint, int> barrier;
    private delegate* unmanaged<nint, int, int> abort;
    private delegate* unmanaged<int> finalize;
    private float[] gathered = [];
    private bool finalized;

    private MpiAllReduce(TimeSpan timeout)
    {
        comm = new CommThread("MPI", timeout);
    }

    /// <inheritdoc/>
    public int Rank { get; private set; }

    /// <inheritdoc/>
    public int Size { get; private set; } = 1;

    /// <inheritdoc/>
    public TimeSpan Timeout => comm.Timeout;

    /// <summary>The MPI library loaded (its file name as found).</summary>
    public string Library { get; private set; } = "";

    /// <summary>
    /// Loads the MPI library, initializes MPI and checks the world size against the launcher's environment; fails with a clear
    /// <see cref="CommunicationException"/> when no MPI library is found or the launcher and the library do not match.
    /// </summary>
    public static MpiAllReduce Start(TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), $"the timeout must be positive; got {timeout}.");
        }

        var mpi = new MpiAllReduce(timeout);
        try
        {
            mpi.comm.Run("MPI_Init", mpi.Init);
        }
        catch
        {
            mpi.comm.Dispose();
            throw;
        }

        int? launched = LauncherSize();
        if (launched is { } n && n != mpi.Size)
        {
            string message = string.Create(CultureInfo.InvariantCulture,
                $"the launcher started {n} ranks ({LauncherVariable()}={n}) but {mpi.Library} reports a world of {mpi.Size}: the launcher and the MPI library do not match "
                + $"(with both MPICH and OpenMPI installed, /usr/bin/mpirun is OpenMPI's): start with the launcher of the library loaded (mpirun.mpich for MPICH, mpirun.openmpi for OpenMPI) or set {LibraryVariable}");
            mpi.Dispose();
            throw new CommunicationException(message);
        }

        return mpi;
    }

    /// <summary>The world size the launcher's environment announces (PMI_SIZE, OMPI_COMM_WORLD_SIZE, PMIX_SIZE), or null outside a launcher.</summary>
    public static int? LauncherSize()
    {
        string? name = LauncherVariable();
        return name != null && int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;
    }

    /// <inheritdoc/>
    public void AllReduceSum(Span<float> values)
    {
        var copy = values.ToArray();
        comm.Run("MPI all-reduce", () => Reduce(copy));
        copy.CopyTo(values);
    }

    /// <inheritdoc/>
    public Task AllReduceSumAsync(Memory<float> values) => comm.Start("MPI all-reduce", () => Reduce(values));

    /// <inheritdoc/>
    public void Wait(Task operation) => comm.Wait(operation, "MPI all-reduce");

    /// <inheritdoc/>
    public void Barrier() => comm.Run("MPI_Barrier", () => Check(barrier(world), "MPI_Barrier"));

    /// <summary>Ends every rank at once (MPI_Abort), e.g. after this rank failed and the others would wait for it; returns if MPI is not running.</summary>
    public void Abort(int code)
    {
        if (!finalized && abort != null)
        {
            // MPI_Abort from any thread: the MPI thread may be stuck in a collective with a dead peer.
            abort(world, code);
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (!finalized && comm.Broken == null && finalize != null)
        {
            try
            {
                comm.Run("MPI_Finalize", () => Check(finalize(), "MPI_Finalize"));
            }
            catch (CommunicationException)
            {
                // Finalizing after a failure is best effort; the failure was reported already.
            }

            finalized = true;
        }

        comm.Dispose();
    }

    private static string? LauncherVariable() =>
        new[] { "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE" }.FirstOrDefault(v => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(v)));

    private static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } named)
        {
            return [named];
        }

        // Under OpenMPI's launcher its library first; else MPICH's (its soname, then the generic name Debian links to it).
        return Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") != null
            ? ["libmpi.so.40", "libmpich.so.12", "libmpi.so.12"]
            : ["libmpich.so.12", "libmpi.so.12", "libmpi.so.40"];
    }

    private void Init()
    {
        var tried = new List<string>();
        foreach (string name in Candidates())
        {
            if (NativeLibrary.TryLoad(name, out library))
            {
                Library = name;
                break;
            }

            tried.Add(name);
        }

        if (library == 0)
        {
            throw new CommunicationException($"no MPI library found (tried {string.Join(", ", tried)}): install MPICH (Debian: apt-get install mpich) or OpenMPI, or name the library in {LibraryVariable}.");
        }

        initThread = (delegate* unmanaged<int*, nint, int, int*, int>)Export("MPI_Init_thread");
        commRank = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_size");
        allgather = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Export("MPI_Allgather");
        barrier = (delegate* unmanaged<nint, int>)Export("MPI_Barrier");
        abort = (delegate* unmanaged<nint, int, int>)Export("MPI_Abort");
        finalize = (delegate* unmanaged<int>)Export("MPI_Finalize");
        if (NativeLibrary.TryGetExport(library, "ompi_mpi_comm_world", out nint ompiWorld))
        {
            world = ompiWorld;
            floatType = Export("ompi_mpi_float");
        }
        else
        {
            world = 0x44000000;
            floatType = 0x4c00040a;
        }

        int provided;
        Check(initThread(null, 0, ThreadFunneled, &provided), "MPI_Init_thread");
        if (provided < ThreadFunneled)
        {
            throw new CommunicationException($"{Library} provides thread level {provided}; data-parallel training needs MPI_THREAD_FUNNELED (1).");
        }

        int rank, size;
        Check(commRank(world, &rank), "MPI_Comm_rank");
        Check(commSize(world, &size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
    }

    private nint Export(string name) => NativeLibrary.TryGetExport(library, name, out nint address)
        ? address
        : throw new CommunicationException($"{Library} has no {name}; is it an MPI library?");

    private void Reduce(Memory<float> values)
    {
        int length = values.Length;
        long total = (long)length * Size;
        if (total > int.MaxValue)
        {
            throw new CommunicationException($"an all-reduce of {length} floats over {Size} ranks gathers {total} floats, more than one MPI call moves; use smaller buckets.");
        }

        if (gathered.Length < total)
        {
            gathered = GC.AllocateUninitializedArray<float>((int)total, pinned: true);
        }

        using (var pin = values.Pin())
        {
            fixed (float* recv = gathered)
            {
                Check(allgather(pin.Pointer, length, floatType, recv, length, floatType, world), "MPI_Allgather");
            }
        }

        RankOrder.SumGathered(values.Span, gathered.AsSpan(0, (int)total), Size, length);
    }

    private void Check(int code, string call)
    {
        if (code != Success)
        {
            throw new CommunicationException(string.Create(CultureInfo.InvariantCulture, $"{call} returned error code {code} ({Library}, rank {Rank} of {Size})"));
        }
    }
}
