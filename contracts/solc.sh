#!/usr/bin/env bash
# solc-js behind the command-line face of native solc, for forge (DESIGN section 10): forge cannot
# download a native solc on these machines, so foundry.toml points `solc` at this script.
#  - `--version` answers like native solc, which forge parses to pick its settings;
#  - `--allow-paths <arg>` is dropped (solc-js has no such option; forge passes every source inline);
#  - solc-js's output goes to a temporary file first: piped straight through, Node can exit before
#    the pipe is flushed and forge would read truncated JSON on larger builds;
#  - lines starting with `>>>` (solc-js's own notices) are removed so only the JSON remains.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
solcjs="$here/node_modules/solc/solc.js"
if [ ! -f "$solcjs" ]; then
  echo "solc.sh: $solcjs is missing; run \`make deps-npm\` (npm ci in contracts/)" >&2
  exit 1
fi

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --version)
      v="$(node -e 'process.stdout.write(require(process.argv[1]).version())' "$here/node_modules/solc/index.js")"
      printf 'solc, the solidity compiler commandline interface\nVersion: %s\n' "$v"
      exit 0
      ;;
    --allow-paths) shift 2 || shift ;;
    --allow-paths=*) shift ;;
    *) args+=("$1"); shift ;;
  esac
done

# The standard-JSON input is buffered in a file too: solc-js reads fd 0 with one synchronous read,
# which can fail with EAGAIN on a pipe that forge is still filling.
in="$(mktemp "${TMPDIR:-/tmp}/solcjs-in.XXXXXX")"
out="$(mktemp "${TMPDIR:-/tmp}/solcjs-out.XXXXXX")"
trap 'rm -f "$in" "$out"' EXIT
cat >"$in"
node "$solcjs" "${args[@]}" <"$in" >"$out"
grep -v '^>>>' "$out" || true
