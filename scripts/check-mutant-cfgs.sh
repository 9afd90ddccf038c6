#!/usr/bin/env bash
# Mutant features of the consensus crate break one rule each, to prove the simulator's checker.
# Their cfg may appear only inside consensus/src (never in the simulator or the checker), and no
# other crate may enable them.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(grep -rn 'mutant-' --include='*.rs' . \
  | grep -v '^./consensus/src/' \
  | grep -v '^./consensus/tests/mutants.rs' || true)
sim=$(grep -rln 'feature *= *"mutant-' consensus/src/sim 2>/dev/null || true)
deps=$(grep -rn 'mutant-' --include=Cargo.toml . | grep -v '^./consensus/Cargo.toml' || true)
if [ -n "$bad$sim$deps" ]; then
  echo "mutant cfgs found outside the rules they break:" >&2
  printf '%s\n' "$bad" "$sim" "$deps" >&2
  exit 1
fi
echo "==> mutant cfgs confined to consensus rules"
