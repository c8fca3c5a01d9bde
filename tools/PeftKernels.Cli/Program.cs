using System.CommandLine;
using PeftKernels.Cli;

var root = new RootCommand("peft: parameter-efficient fine-tuning kernels and tools for .NET");
root.Subcommands.Add(BenchCommand.Create());
return root.Parse(args).Invoke();
