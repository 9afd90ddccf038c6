#!/usr/bin/env bash
# A local chain with the membership contract deployed (what `make testnet` runs until the Rust
# testnet tool exists, and what it can build on). Idempotent: it stops the anvil it started last
# time (pid in .run/anvil/anvil.pid) and starts from a fresh chain, so addresses repeat.
#
#  1. anvil from contracts/node_modules, detached: --slots-in-an-epoch 1 --block-time 1, so
#     `finalized` trails the head by 2 blocks and blocks come without transactions (DESIGN 10);
#  2. deploys DstackMembershipNFT with anvil's first dev key (scripts/deploy.sh);
#  3. pins a development KMS root (a fixed, public dev key) and app id;
#  4. mints to four owner accounts (anvil dev accounts 1-4) with powers 1, 1, 2, 3.
# Prints the deployment and writes it to .run/testnet/deployment.json.
# Environment: ANVIL_PORT (default 8545), ANVIL_BIN / CAST_BIN (default: contracts/node_modules).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$root/contracts"
run="$root/.run/anvil"
port="${ANVIL_PORT:-8545}"
rpc="http://127.0.0.1:$port"

platform="$(uname -s | tr '[:upper:]' '[:lower:]')-$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')"
anvil="${ANVIL_BIN:-$contracts/node_modules/@foundry-rs/anvil-$platform/bin/anvil}"
cast="${CAST_BIN:-$contracts/node_modules/@foundry-rs/cast-$platform/bin/cast}"
die() { echo "testnet: $*" >&2; exit 1; }
for b in "$anvil" "$cast"; do [ -x "$b" ] || die "$b is missing; run \`make deps-npm\`"; done

# Public development keys: anvil's default accounts (mnemonic "test test ... junk") and fixed
# KMS root / app id. Never use them on a real chain.
DEPLOYER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
DEPLOYER=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
OWNERS=(0x70997970C51812dc3A010C7d01b50e0d17dc79C8 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC
        0x90F79bf6EB2c4f870365E785982E1f101E93b906 0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65)
OWNER_KEYS=(0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
            0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a
            0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
            0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a)
POWERS=(1 1 2 3)
# keccak256("dstack-nft-cluster dev kms root") and the first 20 bytes of
# keccak256("dstack-nft-cluster dev app")
DEV_KMS_ROOT_KEY=0x5ad3aec28cc1c30e7af53061b6ed591e16454305a0e088c63d33846f0b1015de
DEV_APP_ID=0xe20fcd9b4977e143022fec65cde798af99684afd
PURPOSE=dstack-nft-cluster

# 1. stop the anvil this script started before (by its recorded pid only)
mkdir -p "$run"
if [ -f "$run/anvil.pid" ]; then
  old="$(cat "$run/anvil.pid")"
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null && [ "$(ps -o comm= -p "$old")" = anvil ]; then
    echo "==> stopping the previous anvil (pid $old)"
    kill "$old"
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$old" 2>/dev/null && die "previous anvil (pid $old) did not stop"
  fi
  rm -f "$run/anvil.pid"
fi
if "$cast" chain-id --rpc-url "$rpc" >/dev/null 2>&1; then
  die "something this script did not start already serves $rpc; stop it or set ANVIL_PORT"
fi

echo "==> starting anvil on $rpc (log: .run/anvil/anvil.log)"
setsid "$anvil" --host 127.0.0.1 --port "$port" --slots-in-an-epoch 1 --block-time 1 \
  >"$run/anvil.log" 2>&1 </dev/null &
echo $! >"$run/anvil.pid"
for _ in $(seq 100); do
  "$cast" chain-id --rpc-url "$rpc" >/dev/null 2>&1 && break
  kill -0 "$(cat "$run/anvil.pid")" 2>/dev/null || { cat "$run/anvil.log" >&2; die "anvil exited"; }
  sleep 0.1
done
chain_id="$("$cast" chain-id --rpc-url "$rpc")" || die "anvil did not answer within 10 s"

# 2-3. deploy and configure
kms_root="$("$cast" wallet address "$DEV_KMS_ROOT_KEY")"
contract="$(RPC_URL="$rpc" PRIVATE_KEY="$DEPLOYER_KEY" KMS_ROOT="$kms_root" APP_IDS="$DEV_APP_ID" \
  PURPOSE="$PURPOSE" OWNER="$DEPLOYER" bash "$root/scripts/deploy.sh" 2>"$run/deploy.log")" || {
  cat "$run/deploy.log" >&2; die "deployment failed"; }

# 4. mint (anvil's accounts are unlocked: no key needed)
send() { "$cast" send --rpc-url "$rpc" --unlocked --from "$DEPLOYER" "$contract" "$@" >/dev/null; }
for i in 0 1 2 3; do
  send "mintBatch(address,uint256)" "${OWNERS[$i]}" "${POWERS[$i]}"
done

# read the result back from the chain
token_lines=()
owners_json=""
next=1
for i in 0 1 2 3; do
  ids=()
  for _ in $(seq "${POWERS[$i]}"); do
    got="$("$cast" call --rpc-url "$rpc" "$contract" "ownerOf(uint256)(address)" "$next")"
    [ "${got,,}" = "${OWNERS[$i],,}" ] || die "token $next is owned by $got, expected ${OWNERS[$i]}"
    ids+=("$next"); next=$((next + 1))
  done
  token_lines+=("  owner $((i + 1)) ${OWNERS[$i]}: tokens ${ids[*]} (power ${POWERS[$i]})")
  owners_json+="${owners_json:+,}{\"address\":\"${OWNERS[$i]}\",\"privateKey\":\"${OWNER_KEYS[$i]}\",\"tokens\":[$(IFS=,; echo "${ids[*]}")]}"
done
total="$("$cast" call --rpc-url "$rpc" "$contract" "totalMinted()(uint256)")"
[ "$total" = 7 ] || die "totalMinted is $total, expected 7"

mkdir -p "$root/.run/testnet"
cat >"$root/.run/testnet/deployment.json" <<JSON
{
  "rpcUrl": "$rpc",
  "chainId": $chain_id,
  "contract": "$contract",
  "deployer": "$DEPLOYER",
  "kmsRoot": "$kms_root",
  "kmsRootPrivateKey": "$DEV_KMS_ROOT_KEY",
  "appId": "$DEV_APP_ID",
  "purpose": "$PURPOSE",
  "owners": [$owners_json]
}
JSON

cat <<EOF_OUT

dstack-nft-cluster local chain is up
  rpc url       $rpc   (anvil, 1 s blocks, finalized = head - 2)
  chain id      $chain_id
  contract      $contract   (DstackMembershipNFT, owner $DEPLOYER)
  kms root      $kms_root   (dev key $DEV_KMS_ROOT_KEY)
  app id        $DEV_APP_ID   purpose "$PURPOSE"
minted tokens:
$(printf '%s\n' "${token_lines[@]}")
deployment:   .run/testnet/deployment.json
anvil log:    .run/anvil/anvil.log
stop anvil:   kill \$(cat .run/anvil/anvil.pid)   (make testnet restarts it from scratch)
EOF_OUT
