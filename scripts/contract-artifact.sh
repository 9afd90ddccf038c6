#!/usr/bin/env bash
# The committed build artifact of DstackMembershipNFT, which the Rust crates read with alloy's
# `sol!` (contracts/artifacts/DstackMembershipNFT.json: abi, bytecode, deployedBytecode,
# methodIdentifiers). Both modes compile contracts/src from scratch in a temporary directory, so a
# stale contracts/out cannot leak in.
#   write   refresh the committed artifact (`make contracts`)
#   check   fail if the committed artifact differs from a fresh build (`make contracts-check`)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$root/contracts"
forge="${FORGE_BIN:-$contracts/node_modules/.bin/forge}"
artifact="$contracts/artifacts/DstackMembershipNFT.json"
mode="${1:-}"
case "$mode" in write | check) ;; *) echo "usage: $0 write|check" >&2; exit 2 ;; esac
if [ ! -x "$forge" ]; then
  echo "contract-artifact: $forge is missing; run \`make deps-npm\`" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Only the sources: tests and scripts do not change the contract's bytes.
(cd "$contracts" && "$forge" build --skip test --skip script --out "$tmp/out" --cache-path "$tmp/cache" \
  >"$tmp/build.log" 2>&1) || { cat "$tmp/build.log" >&2; exit 1; }

node - "$tmp/out/DstackMembershipNFT.sol/DstackMembershipNFT.json" "$tmp/artifact.json" <<'JS'
const fs = require("fs");
const [src, dst] = process.argv.slice(2);
const a = JSON.parse(fs.readFileSync(src, "utf8"));
for (const k of ["abi", "bytecode", "deployedBytecode"]) {
  if (!a[k]) throw new Error(`${src} has no ${k}`);
}
const out = {
  abi: a.abi,
  bytecode: { object: a.bytecode.object },
  deployedBytecode: { object: a.deployedBytecode.object },
  methodIdentifiers: a.methodIdentifiers,
};
if (!/^0x[0-9a-f]{2,}$/.test(out.bytecode.object)) throw new Error("empty or linked bytecode");
fs.writeFileSync(dst, JSON.stringify(out, null, 2) + "\n");
JS

if [ "$mode" = write ]; then
  mkdir -p "$(dirname "$artifact")"
  cp "$tmp/artifact.json" "$artifact"
  echo "wrote ${artifact#"$root"/}"
else
  if ! cmp -s "$tmp/artifact.json" "$artifact"; then
    echo "contracts/artifacts/DstackMembershipNFT.json is missing or differs from a fresh build of" >&2
    echo "contracts/src: run \`make contracts\` and commit contracts/artifacts/" >&2
    exit 1
  fi
  echo "contract artifact matches a fresh build"
fi
