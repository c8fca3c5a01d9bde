#!/usr/bin/env bash
# Runs one fuzz target under afl-fuzz (one core, one afl-fuzz process):
#   tools/fuzz/run.sh TARGET SECONDS [EXECS]
# TARGET: safetensors, config-json, adapter-config, bnb-state, tokenizer-json, tokenizer-model.
# Stops after SECONDS, or after about EXECS executions when given (afl-fuzz -E), whichever is first.
# Builds tools/PeftKernels.Fuzz, copies it to $FUZZ_WORK/app (default tools/fuzz/.work), instruments
# PeftKernels.dll there with SharpFuzz (installed into tools/fuzz/.tools when missing), installs afl++
# (Debian package) when missing, and fuzzes from the committed corpus tools/fuzz/corpus/TARGET.
# Findings land in $FUZZ_WORK/out/TARGET/default/{crashes,hangs}; replay one with
#   dotnet $FUZZ_WORK/app/PeftKernels.Fuzz.dll --replay TARGET FILE
# Prints afl's fuzzer_stats figures at the end (execs_done, run_time, execs_per_sec, crashes, hangs).
# FUZZ_TIMEOUT_MS (default 1000) is afl's per-execution limit: an input slower than this is a hang.
# SharpFuzz's in-process fork server dies when afl kills a slow execution, so afl stops there.
set -euo pipefail

target=${1:?usage: tools/fuzz/run.sh TARGET SECONDS [EXECS]}
seconds=${2:?usage: tools/fuzz/run.sh TARGET SECONDS [EXECS]}
execs=${3:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tools/fuzz"
work=${FUZZ_WORK:-$here/.work}
corpus="$here/corpus/$target"
[ -d "$corpus" ] || { echo "no corpus folder $corpus" >&2; exit 2; }

if ! command -v afl-fuzz > /dev/null; then
    echo "installing afl++ (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ > /dev/null
fi

sharpfuzz="$here/.tools/sharpfuzz"
if [ ! -x "$sharpfuzz" ]; then
    dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$here/.tools" > /dev/null
fi

mkdir -p "$work"
dotnet build "$root/tools/PeftKernels.Fuzz" -c Release -warnaserror -nologo -v q > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
rm -rf "$work/app"
cp -r "$root/tools/PeftKernels.Fuzz/bin/Release/net10.0" "$work/app"
"$sharpfuzz" "$work/app/PeftKernels.dll"
if [[ "$target" == tokenizer-* ]]; then
    # The tokenizer readers run inside Microsoft.ML.Tokenizers (and Google.Protobuf for tokenizer.model).
    "$sharpfuzz" "$work/app/Microsoft.ML.Tokenizers.dll"
    "$sharpfuzz" "$work/app/Google.Protobuf.dll"
fi

out="$work/out/$target"
rm -rf "$out"
mkdir -p "$work/out"
dict=()
[ -f "$here/dict/$target.dict" ] && dict=(-x "$here/dict/$target.dict")
limit=(-V "$seconds")
[ -n "$execs" ] && limit+=(-E "$execs")

# dotnet is not an afl-instrumented binary (SharpFuzz instruments the IL): skip afl's binary check.
# No CPU binding (the machine is shared); no core-dump handler check.
AFL_SKIP_BIN_CHECK=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
AFL_NO_UI=1 DOTNET_TieredPGO=0 \
    afl-fuzz -i "$corpus" -o "$out" -t "${FUZZ_TIMEOUT_MS:-1000}" -m none "${dict[@]}" "${limit[@]}" -- \
    dotnet "$work/app/PeftKernels.Fuzz.dll" "$target" > "$out.log" 2>&1 || { tail -30 "$out.log" >&2; exit 1; }

stats="$out/default/fuzzer_stats"
grep -E '^(execs_done|run_time|execs_per_sec|corpus_count|saved_crashes|saved_hangs|stability|bitmap_cvg) ' "$stats"
