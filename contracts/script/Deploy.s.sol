// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Cheats} from "../test/utils/Cheats.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";

/// @notice Prints through forge's console (the address forge intercepts).
library Log {
    address private constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function line(string memory text) internal view {
        _send(abi.encodeWithSignature("log(string)", text));
    }

    function kv(string memory label, address value) internal view {
        _send(abi.encodeWithSignature("log(string,address)", label, value));
    }

    function kv(string memory label, uint256 value) internal view {
        _send(abi.encodeWithSignature("log(string,uint256)", label, value));
    }

    function kv(string memory label, string memory value) internal view {
        _send(abi.encodeWithSignature("log(string,string)", label, value));
    }

    function _send(bytes memory payload) private view {
        (bool ok,) = CONSOLE.staticcall(payload);
        ok; // the console never fails; nothing to do either way
    }
}

/// @notice Deploys and configures DstackMembershipNFT on anvil or any RPC (Base Sepolia, Base).
/// Environment (all optional except a signer):
///   PRIVATE_KEY   deployer key (else forge's --account / --keystore signer)
///   OWNER         final owner; when it is not the deployer, ownership is offered to it
///                 (Ownable2Step: OWNER must call acceptOwnership())
///   KMS_ROOT      dstack KMS root address (registration stays closed while unset)
///   APP_IDS       comma-separated 20-byte dstack app ids (0x...) to allow
///   PURPOSE       key purpose string, default "dstack-nft-cluster"
///   MAX_SUPPLY    0 = unlimited (default)     MINT_PRICE      wei, default 0
///   PUBLIC_MINTING true/false, default false  NAME / SYMBOL   token name and symbol
/// Prints `DstackMembershipNFT deployed at: <address>`, which scripts/deploy.sh reads.
contract Deploy is Cheats {
    function run() external returns (DstackMembershipNFT nft) {
        uint256 pk = vm.envOr("PRIVATE_KEY", uint256(0));
        if (pk != 0) vm.startBroadcast(pk);
        else vm.startBroadcast();
        address deployer = pk != 0 ? vm.addr(pk) : msg.sender;
        address owner = vm.envOr("OWNER", deployer);

        nft = new DstackMembershipNFT(
            vm.envOr("NAME", string("Dstack Cluster Validator")), vm.envOr("SYMBOL", string("DSTV")), deployer
        );

        address kmsRoot = vm.envOr("KMS_ROOT", address(0));
        if (kmsRoot != address(0)) nft.setKmsRoot(kmsRoot);

        bytes20[] memory appIds = _appIds(vm.envOr("APP_IDS", string("")));
        for (uint256 i = 0; i < appIds.length; ++i) {
            nft.setAppIdAllowed(appIds[i], true);
        }

        string memory purpose = vm.envOr("PURPOSE", string("dstack-nft-cluster"));
        if (keccak256(bytes(purpose)) != keccak256(bytes(nft.purpose()))) nft.setPurpose(purpose);

        uint256 maxSupply = vm.envOr("MAX_SUPPLY", uint256(0));
        if (maxSupply != 0) nft.setMaxSupply(maxSupply);
        uint256 mintPrice = vm.envOr("MINT_PRICE", uint256(0));
        if (mintPrice != 0) nft.setMintPrice(mintPrice);
        if (vm.envOr("PUBLIC_MINTING", false)) nft.setPublicMinting(true);

        if (owner != deployer) nft.transferOwnership(owner);
        vm.stopBroadcast();

        Log.kv("DstackMembershipNFT deployed at:", address(nft));
        Log.kv("chain id:", block.chainid);
        Log.kv("owner:", deployer);
        if (owner != deployer) Log.kv("pending owner (must call acceptOwnership):", owner);
        Log.kv("kms root:", kmsRoot);
        Log.kv("allowed app ids:", appIds.length);
        Log.kv("purpose:", purpose);
    }

    function _appIds(string memory list) internal pure returns (bytes20[] memory ids) {
        if (bytes(list).length == 0) return ids;
        string[] memory parts = vm.split(list, ",");
        ids = new bytes20[](parts.length);
        for (uint256 i = 0; i < parts.length; ++i) {
            bytes memory raw = vm.parseBytes(vm.trim(parts[i]));
            require(raw.length == 20, "APP_IDS: every app id is 20 bytes (0x + 40 hex digits)");
            // casting to bytes20 is safe: the length was checked to be 20 just above.
            // forge-lint: disable-next-line(unsafe-typecast)
            ids[i] = bytes20(raw);
        }
    }
}
