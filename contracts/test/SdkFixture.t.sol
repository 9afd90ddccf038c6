// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Cheats} from "./utils/Cheats.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";

/// @notice Cross-implementation check: a registration produced by the Rust membership SDK
/// (test/fixtures/sdk_registration.json: the dstack chain, the EIP-712 node signature and the
/// deployment it was made for) must be accepted by this contract. The contract is placed at the
/// fixture's address on the fixture's chain id so the EIP-712 domain is the one the SDK signed.
/// A missing fixture fails the test (no silent skip).
contract SdkFixtureTest is Cheats {
    string internal constant FIXTURE = "/test/fixtures/sdk_registration.json";

    struct Fixture {
        uint256 chainId;
        address contractAddress;
        uint256 tokenId;
        address owner;
        address kmsRoot;
        bytes20 appId;
        string purpose;
        bytes20 instanceId;
        string connectionUrl;
        uint256 deadline;
        /// Optional in the file: the nonce signed (must be 0, a fresh contract's) and the node address.
        uint256 nonce;
        address node;
        DstackMembershipNFT.DstackProof proof;
        bytes nodeSignature;
    }

    function test_SdkRegistrationFixtureVerifies() public {
        Fixture memory f = _load();
        DstackMembershipNFT nft = _deployAt(f.contractAddress, f.chainId);
        nft.setKmsRoot(f.kmsRoot);
        nft.setAppIdAllowed(f.appId, true);
        if (keccak256(bytes(f.purpose)) != keccak256(bytes(nft.purpose()))) nft.setPurpose(f.purpose);
        vm.assertTrue(f.tokenId >= 1 && f.tokenId <= 1000, "fixture tokenId in 1..1000");
        nft.mintBatch(f.owner, f.tokenId);
        vm.warp(f.deadline);

        vm.prank(f.owner);
        nft.registerNode(f.tokenId, f.proof, f.instanceId, f.connectionUrl, f.deadline, f.nodeSignature);

        address node = address(uint160(uint256(keccak256(f.proof.derivedPublicKey))));
        if (f.node != address(0)) vm.assertEq(f.node, node, "fixture's node is the derived key's address");
        vm.assertEq(nft.nodeOf(f.tokenId), node, "token authorizes the SDK's node");
        vm.assertEq(nft.powerOf(node), 1, "power 1");
        vm.assertEq(nft.nonces(node), 1, "nonce 0 used");
        DstackMembershipNFT.ValidatorInfo[] memory vs = nft.validators(0, 1);
        vm.assertEq(vs[0].connectionUrl, f.connectionUrl, "url");
        vm.assertEq(bytes32(vs[0].instanceId), bytes32(f.instanceId), "instance id");
    }

    /// The fixture is bound to its deployment: on another chain id the node signature fails.
    function test_SdkRegistrationFixtureRejectedOnAnotherChain() public {
        Fixture memory f = _load();
        DstackMembershipNFT nft = _deployAt(f.contractAddress, f.chainId + 1);
        nft.setKmsRoot(f.kmsRoot);
        nft.setAppIdAllowed(f.appId, true);
        if (keccak256(bytes(f.purpose)) != keccak256(bytes(nft.purpose()))) nft.setPurpose(f.purpose);
        nft.mintBatch(f.owner, f.tokenId);
        vm.warp(f.deadline);
        vm.prank(f.owner);
        vm.expectPartialRevert(DstackMembershipNFT.NodeSignatureMismatch.selector);
        nft.registerNode(f.tokenId, f.proof, f.instanceId, f.connectionUrl, f.deadline, f.nodeSignature);
    }

    function _load() internal view returns (Fixture memory f) {
        string memory path = string.concat(vm.projectRoot(), FIXTURE);
        vm.assertTrue(
            vm.exists(path),
            "contracts/test/fixtures/sdk_registration.json is missing: the membership crate's SDK test writes it"
        );
        string memory json = vm.readFile(path);
        f.chainId = vm.parseUint(vm.parseJsonString(json, ".chainId"));
        f.contractAddress = vm.parseJsonAddress(json, ".contract");
        f.tokenId = vm.parseUint(vm.parseJsonString(json, ".tokenId"));
        f.owner = vm.parseJsonAddress(json, ".owner");
        f.kmsRoot = vm.parseJsonAddress(json, ".kmsRoot");
        f.appId = _bytes20(vm.parseJsonBytes(json, ".appId"), "appId");
        f.purpose = vm.parseJsonString(json, ".purpose");
        f.instanceId = _bytes20(vm.parseJsonBytes(json, ".instanceId"), "instanceId");
        f.connectionUrl = vm.parseJsonString(json, ".connectionUrl");
        f.deadline = vm.parseUint(vm.parseJsonString(json, ".deadline"));
        f.proof.derivedPublicKey = vm.parseJsonBytes(json, ".derivedPublicKey");
        f.proof.appPublicKey = vm.parseJsonBytes(json, ".appPublicKey");
        f.proof.appSignature = vm.parseJsonBytes(json, ".appSignature");
        f.proof.kmsSignature = vm.parseJsonBytes(json, ".kmsSignature");
        f.proof.appId = f.appId;
        f.nodeSignature = vm.parseJsonBytes(json, ".nodeSignature");
        if (vm.keyExistsJson(json, ".nonce")) f.nonce = vm.parseUint(vm.parseJsonString(json, ".nonce"));
        if (vm.keyExistsJson(json, ".node")) f.node = vm.parseJsonAddress(json, ".node");
        vm.assertEq(f.nonce, 0, "the fixture is signed for nonce 0");
    }

    /// @dev Runs the constructor in the context of `target` (so storage and the EIP-712 immutables
    /// belong to that address) and leaves the runtime code there.
    function _deployAt(address target, uint256 chainId_) internal returns (DstackMembershipNFT) {
        vm.chainId(chainId_);
        bytes memory init = abi.encodePacked(
            type(DstackMembershipNFT).creationCode, abi.encode("Dstack Validators", "DSTV", address(this))
        );
        vm.etch(target, init);
        (bool ok, bytes memory runtime) = target.call("");
        vm.assertTrue(ok, "constructor ran at the fixture's address");
        vm.etch(target, runtime);
        return DstackMembershipNFT(target);
    }

    function _bytes20(bytes memory raw, string memory what) internal pure returns (bytes20 out) {
        vm.assertEq(raw.length, 20, string.concat(what, " is 20 bytes"));
        out = bytes20(raw);
    }
}
