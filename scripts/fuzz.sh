#!/usr/bin/env bash
# Builds the cargo-fuzz targets of fuzz/ (libFuzzer) and runs each for SECONDS (default 60),
# printing the executions each reached; fails if any target crashes, breaks an invariant or
# times out. Each target first replays its inputs in fuzz/regressions/<target>/ (crashes found
# before, which must stay fixed), then fuzzes from its committed seeds (fuzz/corpus/<target>/)
# into a scratch corpus under .run/fuzz/ (the checkout is not written). Crash inputs land in
# .run/fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_TARGET_DIR  build dir (default ~/.cache/dstack-nft-cluster/fuzz-target: the fuzz flags
#                    differ from the main build's, so they never share one)
#   FUZZ_ARGS        extra libFuzzer flags (e.g. -fork=2 -ignore_crashes=1 for a long campaign)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/dstack-nft-cluster/fuzz-target}
cargo=${CARGO:-cargo}
# cargo-fuzz passes nightly-only flags (-Z); this lets the stable compiler take them.
export RUSTC_BOOTSTRAP=1

if ! "$cargo" fuzz --version >/dev/null 2>&1; then
  echo "==> cargo-fuzz is missing: installing it from crates.io"
  "$cargo" install cargo-fuzz --locked || true
fi
if ! "$cargo" fuzz --version >/dev/null 2>&1; then
  echo "error: cargo-fuzz is not installed and 'cargo install cargo-fuzz --locked' failed;" \
       "the fuzz step cannot run" >&2
  exit 1
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# The fuzz crate has its own lockfile; refuse to build if it is stale (like --locked).
if ! "$cargo" metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
  echo "error: fuzz/Cargo.lock is stale (a dependency of proto, consensus, membership or node" \
       "changed); refresh it with 'cargo metadata --manifest-path fuzz/Cargo.toml >/dev/null'" \
       "and commit it" >&2
  exit 1
fi

# One build for every target: release with debug assertions and overflow checks, no
# sanitizer (every crate is safe Rust; ASan would only slow the build and the runs).
echo "==> cargo fuzz build (${#targets[@]} targets)"
start=$(date +%s)
(cd fuzz && "$cargo" fuzz build -O -a -s none --target-dir "$target_dir")
echo "    built in $(( $(date +%s) - start )) s"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="$target_dir/$triple/release"

run_dir=.run/fuzz
mkdir -p "$run_dir"
failed=()
printf '==> fuzzing each target for %s s\n' "$seconds"
for t in "${targets[@]}"; do
  log="$run_dir/$t.log"
  regressions=(fuzz/regressions/"$t"/*)
  if [ -e "${regressions[0]}" ]; then
    if ! "$bin/$t" "${regressions[@]}" >"$run_dir/$t.regressions.log" 2>&1; then
      echo "    $t: a regression input crashes again (log: $run_dir/$t.regressions.log)" >&2
      grep -E '^Running: |panicked at' -A1 "$run_dir/$t.regressions.log" | tail -n 4 >&2 || true
      failed+=("$t")
      continue
    fi
  fi
  mkdir -p "$run_dir/corpus/$t" "$run_dir/artifacts/$t"
  rc=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  "$bin/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$run_dir/artifacts/$t/" ${FUZZ_ARGS:-} \
    "$run_dir/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
  if [ "$rc" -ne 0 ]; then
    printf '    %-16s CRASHED after %s execs (log: %s)\n' "$t" "${execs:-?}" "$log"
    grep -E '^(thread|panicked|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -n 20 >&2 || true
    failed+=("$t")
  else
    printf '    %-16s %12s execs  cov %s\n' "$t" "${execs:-?}" "${cov:-?}"
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: fuzz targets failed: ${failed[*]} (inputs in $run_dir/artifacts/)" >&2
  exit 1
fi
echo "==> fuzz: no crash in ${#targets[@]} targets"
