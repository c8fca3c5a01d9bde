#!/usr/bin/env bash
# Runs the GPU runner from a bundle made by tools/gpu/build-bundle.sh, on a Linux x64 host with an
# NVIDIA GPU and no .NET: unpacks the bundled .NET runtime (once), sets DOTNET_ROOT, and runs
#   PeftKernels.GpuRunner <out-dir> [runner options]
# which writes results.json and results.md into <out-dir>.
# Usage: run.sh <out-dir> [--runs N] [--checks-only] [--bench-only]     (or set OUT instead of <out-dir>)
# The bundle is the folder holding this script (when it holds app/), else $BUNDLE_DIR, else
# artifacts/gpu-bundle of the repository. The runtime is unpacked once to $RUNTIME_DIR (default:
# ${TMPDIR:-/tmp}/peft-gpu-dotnet-<checksum of the runtime archive>), so the bundle may be read-only.
# Exit codes: the runner's (0 all checks passed, 1 a check failed, 2 no CUDA device), 3 bundle/setup problems.
set -euo pipefail

die() { echo "run.sh: $*" >&2; exit 3; }

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${BUNDLE_DIR:-}" ]; then
  bundle=$BUNDLE_DIR
elif [ -f "$here/app/PeftKernels.GpuRunner.dll" ]; then
  bundle=$here
else
  bundle=$(cd "$here/../.." && pwd)/artifacts/gpu-bundle
fi

out=${1:-${OUT:-}}
[ -n "$out" ] || die "usage: run.sh <out-dir> [--runs N] [--checks-only] [--bench-only] (or set OUT)."
[ $# -gt 0 ] && shift

[ -f "$bundle/app/PeftKernels.GpuRunner.dll" ] || die "no bundle at $bundle (app/PeftKernels.GpuRunner.dll missing); build it with tools/gpu/build-bundle.sh."
[ -f "$bundle/dotnet-runtime.tar.xz" ] || die "no dotnet-runtime.tar.xz in $bundle; rebuild it with tools/gpu/build-bundle.sh."
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "the bundle is for Linux x86_64, this is $(uname -s)-$(uname -m)."
command -v tar >/dev/null 2>&1 || die "tar not found."
command -v xz >/dev/null 2>&1 || die "xz not found: the runtime is xz-compressed (install xz-utils, or unpack dotnet-runtime.tar.xz elsewhere and set RUNTIME_DIR)."

sum=$(cksum <"$bundle/dotnet-runtime.tar.xz" | cut -d' ' -f1)
runtime=${RUNTIME_DIR:-${TMPDIR:-/tmp}/peft-gpu-dotnet-$sum}
stamp="$runtime/.unpacked-from-$sum"
if [ ! -f "$stamp" ]; then
  echo "run.sh: unpacking the .NET runtime to $runtime"
  rm -rf "$runtime"
  mkdir -p "$runtime"
  tar -C "$runtime" -xJf "$bundle/dotnet-runtime.tar.xz" || die "could not unpack $bundle/dotnet-runtime.tar.xz into $runtime."
  touch "$stamp"
fi
[ -x "$runtime/dotnet" ] || die "$runtime/dotnet is missing or not executable."

export DOTNET_ROOT=$runtime
export PATH="$runtime:$PATH"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_gcServer=0
mkdir -p "$out" || die "cannot create the output folder $out."

set +e
"$runtime/dotnet" "$bundle/app/PeftKernels.GpuRunner.dll" "$out" "$@"
status=$?
set -e
case $status in
  0) echo "run.sh: all GPU kernel checks passed; results in $out" ;;
  1) echo "run.sh: some GPU kernel checks failed or the run broke; see $out/results.md" >&2 ;;
  2) echo "run.sh: no CUDA device on this host; nothing was run." >&2 ;;
  *) echo "run.sh: the runner exited with status $status." >&2 ;;
esac
exit $status
