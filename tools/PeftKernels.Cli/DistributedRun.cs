// The data-parallel options of `peft train` and `peft pretrain`:
//   --distributed      run as one rank of an MPI launch (mpirun.mpich -np N peft train ... --distributed):
//                      MpiAllReduce over MPI_COMM_WORLD; every rank reads the same --model and --data,
//                      trains its shard of every global batch (--batch is the global batch), and the
//                      trainable parameters' gradients are all-reduced; rank 0 alone prints progress
//                      and writes checkpoints and the output (the others' log is discarded).
//   --data-shards S    the shards per global batch (default: the number of ranks). Without --distributed,
//                      S > 1 makes one process compute the S shards one after another and sum them in
//                      shard order: the same bytes as an S-rank --distributed run.
//   --comm-timeout s   the longest a rank waits for its peers in one operation before it stops with an error.
// S (when data-parallel) is part of the run's numbers, so it is recorded in training_args.json and
// --resume checks it; the number of ranks is not (an S-shard run resumes on one process or on S ranks).
// A rank that fails after MPI started ends every rank (MPI_Abort) once it has printed its error, so
// the others do not wait for it.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Distributed;
using PeftKernels.Training;

namespace PeftKernels.Cli;

/// <summary>The --distributed, --data-shards and --comm-timeout options, and the MPI world of a run.</summary>
internal sealed class DistributedRun : IDisposable
{
    private readonly Option<bool> distributed = new("--distributed")
    {
        Description = "Data-parallel training as one rank of an MPI launch (mpirun.mpich -np N peft ... --distributed): each rank trains its shard of every global batch "
            + "(--batch), the trainable parameters' gradients are all-reduced, rank 0 prints and writes the output.",
    };

    private readonly Option<int?> shards = new("--data-shards")
    {
        HelpName = "count",
        Description = "Shards per global batch, summed in shard order (default: the number of ranks); without --distributed, one process computes them in turn "
            + "and gives the bytes of that many ranks.",
    };

    private readonly Option<double> timeout = new("--comm-timeout")
    {
        HelpName = "seconds",
        Description = "With --distributed: the longest a rank waits for the others in one all-reduce before it stops with an error (a peer died or hangs).",
        DefaultValueFactory = _ => 300,
    };

    private IAllReduce? group;

    /// <summary>The options, to add to a verb.</summary>
    public IEnumerable<Option> Options => [distributed, shards, timeout];

    /// <summary>True on the rank that prints and writes (rank 0, or a run without ranks).</summary>
    public bool Writes => group == null || group.Rank == 0;

    /// <summary>The communicator of the run (null when not data-parallel).</summary>
    public IAllReduce? Group => group;

    /// <summary>
    /// Checks the options, starts MPI under --distributed, and records the shard count in <paramref name="runArgs"/>; returns the data-parallel
    /// options for the trainer (null for an ordinary run).
    /// </summary>
    public DataParallelOptions? Start(ParseResult parse, int batch, string device, IDictionary<string, string> runArgs)
    {
        bool on = parse.GetValue(distributed);
        int? count = parse.GetValue(shards);
        if (count is < 1)
        {
            throw new ArgumentException($"--data-shards must be at least 1; got {count}.");
        }

        double seconds = parse.GetValue(timeout);
        if (!(seconds > 0) || double.IsInfinity(seconds))
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--comm-timeout must be a positive number of seconds; got {seconds}."));
        }

        if (!on && count == null)
        {
            return null;
        }

        if (!string.Equals(device, "cpu", StringComparison.OrdinalIgnoreCase))
        {
            throw new ArgumentException($"--distributed and --data-shards train on the CPU; got --device {device}.");
        }

        try
        {
            group = on ? MpiAllReduce.Start(TimeSpan.FromSeconds(seconds)) : InProcessAllReduce.CreateGroup(1, TimeSpan.FromSeconds(seconds))[0];
        }
        catch (CommunicationException e)
        {
            throw new ArgumentException($"--distributed: {e.Message}", e);
        }

        int s = count ?? group.Size;
        if (group.Size > 1 && s != group.Size)
        {
            throw new ArgumentException($"--data-shards {s} must equal the number of ranks ({group.Size}) under --distributed (or be left out).");
        }

        if (batch % s != 0)
        {
            throw new ArgumentException($"--batch {batch} (the global batch) must be a multiple of the {s} data-parallel shards.");
        }

        runArgs["--data-shards"] = s.ToString(CultureInfo.InvariantCulture);
        return new DataParallelOptions { Group = group, Shards = s };
    }

    /// <summary>The log of this rank: <paramref name="log"/> on the writing rank, nothing elsewhere.</summary>
    public TextWriter Log(TextWriter log) => Writes ? log : TextWriter.Null;

    /// <summary>The line the writing rank prints about the data-parallel setup ("" when not data-parallel).</summary>
    public string Describe(int batch, int shardCount) => group == null ? ""
        : string.Create(CultureInfo.InvariantCulture, $"data-parallel: {group.Size} rank(s){(group is MpiAllReduce mpi ? $" ({mpi.Library})" : "")}, {shardCount} shard(s) of {batch / shardCount} sequence(s) per global batch of {batch}");

    /// <summary>
    /// The line the writing rank prints after training: the time this rank waited for the all-reduce (after its own backward
    /// finished) against the whole run ("" when not data-parallel).
    /// </summary>
    public string Communication(Training.Trainer trainer, TimeSpan elapsed) => group == null ? ""
        : string.Create(CultureInfo.InvariantCulture,
            $"communication: waited {trainer.CommunicationWait.TotalSeconds:F2} s for the all-reduce in {elapsed.TotalSeconds:F2} s of training ({100 * trainer.CommunicationWait.TotalSeconds / Math.Max(elapsed.TotalSeconds, 1e-9):F1} %)");

    /// <summary>Runs <paramref name="body"/> (a verb's work); under MPI a failure of this rank ends every rank after the error is printed.</summary>
    public int Guard(ParseResult parse, Func<TextWriter, int> body)
    {
        int code = Cli.Guard(parse, log =>
        {
            try
            {
                return body(log);
            }
            catch (CommunicationException e)
            {
                throw new IOException(e.Message, e);
            }
        });
        if (code != 0 && group is MpiAllReduce { Size: > 1 } mpi)
        {
            parse.InvocationConfiguration.Error.Flush();
            mpi.Abort(code);
        }

        Dispose();
        return code;
    }

    /// <summary>Finalizes MPI (after the writing rank wrote its output).</summary>
    public void Dispose()
    {
        group?.Dispose();
        group = null;
    }
}
