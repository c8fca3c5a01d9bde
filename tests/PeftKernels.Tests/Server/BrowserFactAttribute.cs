// The browser tests run the system Chromium (Debian package chromium) through Microsoft.Playwright; no
// browser is ever downloaded. They run everywhere (and fail with the install command when Chromium is
// missing) unless PEFT_SKIP_BROWSER_TESTS=1 asks to skip them.
namespace PeftKernels.Tests.Server;

/// <summary>A fact that needs the system Chromium; skipped only when <c>PEFT_SKIP_BROWSER_TESTS=1</c>.</summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public const string SkipVariable = "PEFT_SKIP_BROWSER_TESTS";

    public BrowserFactAttribute() => Skip = SkipReason(Environment.GetEnvironmentVariable(SkipVariable));

    /// <summary>The skip reason for the variable's value: only "1" skips.</summary>
    public static string? SkipReason(string? value) => value == "1" ? $"{SkipVariable}=1: browser tests skipped." : null;
}

internal static class SystemChromium
{
    private static readonly string[] Names = ["chromium", "chromium-browser"];

    /// <summary>The Chromium executable on PATH; throws with the install command when there is none.</summary>
    public static string Find() => Find(Environment.GetEnvironmentVariable("PATH"));

    /// <summary>The Chromium executable in the directories of <paramref name="searchPath"/> (a PATH value).</summary>
    public static string Find(string? searchPath)
    {
        foreach (string dir in (searchPath ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            foreach (string name in Names)
            {
                string path = Path.Combine(dir, name);
                if (File.Exists(path))
                {
                    return path;
                }
            }
        }

        throw new InvalidOperationException("the browser tests need the system Chromium and none is on PATH (looked for "
            + string.Join(", ", Names) + "): install it with `apt-get install chromium` (Debian), or set "
            + BrowserFactAttribute.SkipVariable + "=1 to skip these tests.");
    }
}
