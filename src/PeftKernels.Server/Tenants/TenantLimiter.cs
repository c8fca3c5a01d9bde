// One tenant's rate limit (System.Threading.RateLimiting), shared by every key acting for the tenant:
//   requests per minute  a token bucket of `burst` tokens (default: one minute's worth) refilled k tokens
//                        every k·60 s / rpm with k = ⌈rpm / 600⌉, so the refill timer ticks at most every
//                        100 ms and the sustained rate is exactly rpm
//   concurrent requests  a concurrency limiter without a queue; the lease is held until the request ends
// Neither queues: a spent limit answers 429 at once with the delay the limiter suggests (Retry-After).
using System.Threading.RateLimiting;

namespace PeftKernels.Server.Tenants;

internal sealed class TenantLimiter : IDisposable
{
    private readonly TokenBucketRateLimiter? rate;
    private readonly ConcurrencyLimiter? concurrency;

    public TenantLimiter(TenantRateLimit limit)
    {
        if (limit.RequestsPerMinute is int rpm)
        {
            int perPeriod = (int)(((long)rpm + 599) / 600);
            rate = new TokenBucketRateLimiter(new TokenBucketRateLimiterOptions
            {
                TokenLimit = limit.Burst ?? rpm,
                TokensPerPeriod = perPeriod,
                ReplenishmentPeriod = TimeSpan.FromTicks(TimeSpan.TicksPerMinute * perPeriod / rpm),
                QueueLimit = 0,
                AutoReplenishment = true,
            });
        }

        if (limit.ConcurrentRequests is int concurrent)
        {
            concurrency = new ConcurrencyLimiter(new ConcurrencyLimiterOptions { PermitLimit = concurrent, QueueLimit = 0 });
        }
    }

    /// <summary>Whether a concurrency lease must be held for the request's lifetime.</summary>
    public bool HasConcurrencyCap => concurrency != null;

    /// <summary>
    /// Takes one request: null when refused (<paramref name="refusal"/> says which limit and how long to wait); otherwise the lease to
    /// dispose when the request ends (a no-op lease without a concurrency cap).
    /// </summary>
    public IDisposable? TryAcquire(out (string What, TimeSpan RetryAfter) refusal)
    {
        refusal = default;
        RateLimitLease? held = null;
        if (concurrency != null)
        {
            held = concurrency.AttemptAcquire();
            if (!held.IsAcquired)
            {
                held.Dispose();
                refusal = ("concurrent requests", TimeSpan.FromSeconds(1));
                return null;
            }
        }

        if (rate != null)
        {
            using var lease = rate.AttemptAcquire();
            if (!lease.IsAcquired)
            {
                held?.Dispose();
                var retry = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? after : TimeSpan.FromSeconds(1);
                refusal = ("requests per minute", retry);
                return null;
            }
        }

        return held ?? (IDisposable)NoLease.Instance;
    }

    public void Dispose()
    {
        rate?.Dispose();
        concurrency?.Dispose();
    }

    private sealed class NoLease : IDisposable
    {
        public static readonly NoLease Instance = new();

        public void Dispose()
        {
        }
    }
}
