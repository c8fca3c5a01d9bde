// The server as `peft serve` runs it, composed from its parts: the model folder loaded (ServedModel),
// the request gate — TenantGate over an API-key file when ServeOptions.ApiKeysFile is set, else OpenGate
// (everyone is the anonymous tenant; adapter management allowed when an adapters directory confines it)
// — sharing one set of canary aliases (the key file's "aliases", changeable at run time), and
// Prometheus metrics (ServerMetrics, with the engine's gauges) at GET /metrics, plus the alias endpoints.
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using PeftKernels.Server.Metrics;
using PeftKernels.Server.Tenants;

namespace PeftKernels.Server;

public sealed partial class PeftServer
{
    /// <summary>
    /// Loads <see cref="ServeOptions.ModelFolder"/> and builds the full server: key-file or open gate with canary aliases,
    /// <c>GET /metrics</c> (Prometheus text) and <c>/v1/aliases</c>. The gate, when it holds timers, is disposed with the server.
    /// </summary>
    /// <exception cref="InvalidDataException">The API-key file is malformed (the message names the file and the field).</exception>
    public static PeftServer CreateWithTenantsAndMetrics(ServeOptions options, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var model = ServedModel.Load(options.ModelFolder, options.ModelName);
        var aliases = new CanaryAliases();
        IRequestGate gate = options.ApiKeysFile != null
            ? TenantGate.FromFile(options.ApiKeysFile, model.Name, aliases)
            : new OpenGate(model.Name, canManageAdapters: options.AdaptersDir != null, aliases);
        var metrics = new ServerMetrics();
        try
        {
            var server = new PeftServer(model, options, gate, metrics, configureLogging, (app, built) =>
            {
                metrics.Attach(built.Engine);
                app.MapPeftMetrics(metrics);
                app.MapPeftAliases(gate, aliases);
            });
            server.owned = gate as IDisposable;
            return server;
        }
        catch
        {
            (gate as IDisposable)?.Dispose();
            throw;
        }
    }
}
