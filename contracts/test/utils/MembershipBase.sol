// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Cheats, Vm} from "./Cheats.sol";
import {DstackMembershipNFT} from "../../src/DstackMembershipNFT.sol";

/// @notice Fixture shared by the contract tests: a deployed NFT, a KMS root, an allowed app, three
/// token owners, and builders of the dstack signature chain in dstack's exact byte formats
/// (DESIGN section 2), written independently of the contract's own encoding.
abstract contract MembershipBase is Cheats {
    uint256 internal constant SECP256K1_N =
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    uint256 internal constant KMS_PK = 0xC0FFEE0000000000000000000000000000000000000000000000000000000001;
    uint256 internal constant APP_PK = 0xA99000000000000000000000000000000000000000000000000000000000000A;
    bytes20 internal constant APP_ID = bytes20(hex"ea549f02e1a25fabd1cb788380e033ec5461b2ff");
    string internal constant PURPOSE = "dstack-nft-cluster";
    string internal constant URL = "/ip4/127.0.0.1/tcp/26656";
    bytes20 internal constant INSTANCE = bytes20(hex"0123456789abcdef0123456789abcdef01234567");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant REGISTRATION_TYPEHASH = keccak256(
        "Registration(uint256 tokenId,address owner,bytes20 instanceId,string connectionUrl,uint256 nonce,uint256 deadline)"
    );

    DstackMembershipNFT internal nft;
    address internal admin = address(0xAD);
    address internal alice = address(0xA11CE);
    address internal bob = address(0xB0B);
    address internal carol = address(0xCA401);
    address internal kmsRootAddr;

    /// @dev A secp256k1 key in every form the tests need.
    struct Key {
        uint256 pk;
        address addr;
        bytes pub64;
        bytes pub33;
    }

    /// @dev Everything a registration call takes.
    struct Reg {
        uint256 tokenId;
        DstackMembershipNFT.DstackProof proof;
        bytes20 instanceId;
        string url;
        uint256 deadline;
        bytes nodeSignature;
    }

    function setUp() public virtual {
        nft = new DstackMembershipNFT("Dstack Validators", "DSTV", admin);
        kmsRootAddr = vm.addr(KMS_PK);
        vm.startPrank(admin);
        nft.setKmsRoot(kmsRootAddr);
        nft.setAppIdAllowed(APP_ID, true);
        nft.mintBatch(alice, 3); // 1, 2, 3
        nft.mintBatch(bob, 2); // 4, 5
        nft.mint(carol); // 6
        vm.stopPrank();
        vm.warp(1_700_000_000);
    }

    // ------------------------------------------------------------ keys and signatures

    function nodePk(uint256 i) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode("node key", i))) % (SECP256K1_N - 1) + 1;
    }

    function key(uint256 pk) internal returns (Key memory k) {
        Vm.Wallet memory w = vm.createWallet(pk);
        k.pk = pk;
        k.addr = w.addr;
        k.pub64 = abi.encodePacked(w.publicKeyX, w.publicKeyY);
        k.pub33 = abi.encodePacked(w.publicKeyY % 2 == 0 ? bytes1(0x02) : bytes1(0x03), w.publicKeyX);
    }

    /// @dev dstack's signature format: r || s || v with v in {0, 1}.
    function dstackSign(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v - 27);
    }

    /// @dev Ethereum tooling's format: r || s || v with v in {27, 28}.
    function ethSign(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev Lowercase hex without 0x (vm.toString gives it with 0x).
    function lowerHex(bytes memory data) internal pure returns (string memory) {
        bytes memory withPrefix = bytes(vm.toString(data));
        bytes memory out = new bytes(withPrefix.length - 2);
        for (uint256 i = 0; i < out.length; ++i) {
            out[i] = withPrefix[i + 2];
        }
        return string(out);
    }

    function appMessage(string memory purpose_, bytes memory derived33) internal pure returns (bytes32) {
        return keccak256(bytes(string.concat(purpose_, ":", lowerHex(derived33))));
    }

    function kmsMessage(bytes20 appId, bytes memory app33) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked("dstack-kms-issued:", appId, app33));
    }

    /// @dev A complete, valid dstack chain KMS root -> app key -> derived key.
    function chain(uint256 kmsPk, uint256 appPk, bytes20 appId, string memory purpose_, uint256 derivedPk)
        internal
        returns (DstackMembershipNFT.DstackProof memory p)
    {
        Key memory app = key(appPk);
        Key memory derived = key(derivedPk);
        p.derivedPublicKey = derived.pub64;
        p.appPublicKey = app.pub64;
        p.appSignature = dstackSign(appPk, appMessage(purpose_, derived.pub33));
        p.kmsSignature = dstackSign(kmsPk, kmsMessage(appId, app.pub33));
        p.appId = appId;
    }

    function proofFor(uint256 derivedPk) internal returns (DstackMembershipNFT.DstackProof memory) {
        return chain(KMS_PK, APP_PK, APP_ID, PURPOSE, derivedPk);
    }

    function domainSeparator(address verifyingContract, uint256 chainId_) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("DstackMembershipNFT"), keccak256("1"), chainId_, verifyingContract
            )
        );
    }

    function digestFor(
        address verifyingContract,
        uint256 chainId_,
        uint256 tokenId,
        address tokenOwner,
        bytes20 instanceId,
        string memory url,
        uint256 nonce,
        uint256 deadline
    ) internal pure returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                REGISTRATION_TYPEHASH, tokenId, tokenOwner, instanceId, keccak256(bytes(url)), nonce, deadline
            )
        );
        return
            keccak256(abi.encodePacked("\x19\x01", domainSeparator(verifyingContract, chainId_), structHash));
    }

    /// @dev A valid registration of the node `derivedPk` by `tokenId` against the deployed NFT.
    function makeReg(uint256 tokenId, uint256 derivedPk) internal returns (Reg memory r) {
        return makeRegWith(tokenId, derivedPk, proofFor(derivedPk), URL);
    }

    function makeRegWith(
        uint256 tokenId,
        uint256 derivedPk,
        DstackMembershipNFT.DstackProof memory proof,
        string memory url
    ) internal view returns (Reg memory r) {
        r.tokenId = tokenId;
        r.proof = proof;
        r.instanceId = INSTANCE;
        r.url = url;
        r.deadline = block.timestamp + 1 hours;
        address node = vm.addr(derivedPk);
        r.nodeSignature = dstackSign(
            derivedPk,
            digestFor(
                address(nft),
                block.chainid,
                tokenId,
                nft.ownerOf(tokenId),
                r.instanceId,
                url,
                nft.nonces(node),
                r.deadline
            )
        );
    }

    function submit(Reg memory r) internal {
        nft.registerNode(r.tokenId, r.proof, r.instanceId, r.url, r.deadline, r.nodeSignature);
    }

    function submitAs(address caller, Reg memory r) internal {
        vm.prank(caller);
        submit(r);
    }

    /// @dev Registers node `derivedPk` with `tokenId` as the token's owner; returns the node address.
    function register(uint256 tokenId, uint256 derivedPk) internal returns (address) {
        submitAs(nft.ownerOf(tokenId), makeReg(tokenId, derivedPk));
        return vm.addr(derivedPk);
    }

    /// @dev Mints `count` tokens to alice and registers one new node with each (keys from 1000 on,
    /// continuing where the previous call stopped).
    function registerMany(uint256 count) internal {
        uint256 first = nft.totalMinted() + 1;
        vm.prank(admin);
        nft.mintBatch(alice, count);
        for (uint256 i = 0; i < count; ++i) {
            submitAs(alice, makeReg(first + i, nodePk(1000 + first + i)));
        }
    }

    /// @dev A signature with s replaced by n - s and v flipped: the same signer, high s.
    function highS(bytes memory sig) internal pure returns (bytes memory) {
        bytes32 r;
        bytes32 s;
        uint8 v = uint8(sig[64]);
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
        }
        uint8 flipped = v >= 27 ? (v == 27 ? 28 : 27) : (v == 0 ? 1 : 0);
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), flipped);
    }

    function withV(bytes memory sig, uint8 v) internal pure returns (bytes memory out) {
        out = bytes.concat(sig);
        out[64] = bytes1(v);
    }
}
