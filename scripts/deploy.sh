#!/usr/bin/env bash
# Deploy DstackMembershipNFT with contracts/script/Deploy.s.sol (`make deploy`).
#
#   RPC_URL=<url> PRIVATE_KEY=0x... make deploy             # key from the environment
#   RPC_URL=<url> DEPLOY_ACCOUNT=<name> make deploy          # foundry keystore (cast wallet import)
#   RPC_URL=<url> KEYSTORE=<path> [KEYSTORE_PASSWORD_FILE=<path>] make deploy
#
# Configuration comes from the environment too (see Deploy.s.sol): OWNER, KMS_ROOT, APP_IDS
# (comma-separated), PURPOSE (default dstack-nft-cluster), MAX_SUPPLY, MINT_PRICE, PUBLIC_MINTING,
# NAME, SYMBOL. A private key is never put on a command line (it would show in `ps`): forge reads
# PRIVATE_KEY from the environment. On success the last line is the contract address; the
# deployment record is also written to .run/deploy/<chain id>.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$root/contracts"
forge="${FORGE_BIN:-$contracts/node_modules/.bin/forge}"
cast="${CAST_BIN:-$contracts/node_modules/.bin/cast}"

die() { echo "deploy: $*" >&2; exit 1; }
[ -x "$forge" ] || die "$forge is missing; run \`make deps-npm\`"
[ -n "${RPC_URL:-}" ] || die "set RPC_URL (e.g. http://127.0.0.1:8545, or a Base Sepolia / Base endpoint)"

signer=()
if [ -n "${PRIVATE_KEY:-}" ]; then
  export PRIVATE_KEY
elif [ -n "${DEPLOY_ACCOUNT:-}" ]; then
  signer=(--account "$DEPLOY_ACCOUNT")
elif [ -n "${KEYSTORE:-}" ]; then
  signer=(--keystore "$KEYSTORE")
else
  die "no signer: set PRIVATE_KEY, DEPLOY_ACCOUNT (a foundry keystore name) or KEYSTORE (a keystore file)"
fi
if [ ${#signer[@]} -gt 0 ] && [ -n "${KEYSTORE_PASSWORD_FILE:-}" ]; then
  signer+=(--password-file "$KEYSTORE_PASSWORD_FILE")
fi

chain_id="$("$cast" chain-id --rpc-url "$RPC_URL")" || die "cannot reach $RPC_URL"
echo "==> deploying DstackMembershipNFT to chain $chain_id via $RPC_URL" >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# `${signer[@]+...}`: an empty array is fine under `set -u`.
if ! (cd "$contracts" && "$forge" script script/Deploy.s.sol:Deploy --rpc-url "$RPC_URL" --broadcast \
  ${signer[@]+"${signer[@]}"} ${FORGE_SCRIPT_FLAGS:-} >"$log" 2>&1); then
  cat "$log" >&2
  die "forge script failed"
fi
sed -n '/== Logs ==/,/^$/p' "$log" >&2
address="$(sed -n 's/.*DstackMembershipNFT deployed at: *\(0x[0-9a-fA-F]\{40\}\).*/\1/p' "$log" | tail -1)"
[ -n "$address" ] || { cat "$log" >&2; die "no address in forge's output"; }
code="$("$cast" code "$address" --rpc-url "$RPC_URL")"
[ "$code" != "0x" ] || die "no code at $address after the deployment"

mkdir -p "$root/.run/deploy"
node -e '
  const [file, chainId, address] = process.argv.slice(1);
  require("fs").writeFileSync(file, JSON.stringify({ chainId: Number(chainId), address }, null, 2) + "\n");
' "$root/.run/deploy/$chain_id.json" "$chain_id" "$address"
echo "$address"
