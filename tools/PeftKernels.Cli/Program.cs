// Entry point of the `peft` tool; the command tree and the shared error handling are in Cli.cs.
using PeftKernels.Cli;

return Cli.Build().Parse(args).Invoke();
