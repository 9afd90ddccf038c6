// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";
import {IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

/// @notice registerNode: the valid dstack chain and every forgery class, each with its own error.
contract RegistrationTest is MembershipBase {
    uint256 internal nodeKey;
    address internal node;

    function setUp() public override {
        super.setUp();
        nodeKey = nodePk(1);
        node = vm.addr(nodeKey);
    }

    // ------------------------------------------------------------ the valid chain

    function test_RegisterValidDstackChain() public {
        Reg memory r = makeReg(1, nodeKey);
        // dstack's v in {0, 1} on all three signatures
        assertTrueV01(r.proof.appSignature);
        assertTrueV01(r.proof.kmsSignature);
        assertTrueV01(r.nodeSignature);
        submitAs(alice, r);

        vm.assertEq(nft.nodeOf(1), node, "nodeOf");
        vm.assertEq(nft.powerOf(node), 1, "power");
        vm.assertEq(nft.nonces(node), 1, "nonce used");
        vm.assertEq(nft.validatorCount(), 1, "validatorCount");
        vm.assertEq(nft.totalPower(), 1, "totalPower");
        DstackMembershipNFT.ValidatorInfo[] memory vs = nft.validators(0, 10);
        vm.assertEq(vs.length, 1, "one validator");
        vm.assertEq(vs[0].node, node, "validator node");
        vm.assertEq(vs[0].publicKey, key(nodeKey).pub64, "validator key");
        vm.assertEq(vs[0].power, 1, "validator power");
        vm.assertEq(vs[0].connectionUrl, URL, "validator url");
        vm.assertEq(bytes32(vs[0].instanceId), bytes32(INSTANCE), "validator instance");
        DstackMembershipNFT.NodeInfo memory info = nft.nodeInfo(node);
        vm.assertEq(info.owner, alice, "node owner");
        vm.assertEq(bytes32(info.appId), bytes32(APP_ID), "stored app id");
        vm.assertEq(info.kmsRoot, kmsRootAddr, "stored kms root");
        vm.assertTrue(info.counted, "counted");
    }

    function test_RegisterAcceptsV27And28() public {
        Key memory app = key(APP_PK);
        Key memory derived = key(nodeKey);
        Reg memory r = makeReg(1, nodeKey);
        r.proof.appSignature = ethSign(APP_PK, appMessage(PURPOSE, derived.pub33));
        r.proof.kmsSignature = ethSign(KMS_PK, kmsMessage(APP_ID, app.pub33));
        r.nodeSignature = withV(r.nodeSignature, uint8(r.nodeSignature[64]) + 27);
        submitAs(alice, r);
        vm.assertEq(nft.powerOf(node), 1, "registered with v 27/28");
    }

    function test_HelperViewsMatchDstackFormats() public {
        Key memory app = key(APP_PK);
        Key memory derived = key(nodeKey);
        vm.assertEq(nft.appMessage(derived.pub64), appMessage(PURPOSE, derived.pub33), "app message");
        vm.assertEq(nft.kmsMessage(APP_ID, app.pub64), kmsMessage(APP_ID, app.pub33), "kms message");
        vm.assertEq(
            nft.registrationDigest(7, bob, INSTANCE, URL, 3, 99),
            digestFor(address(nft), block.chainid, 7, bob, INSTANCE, URL, 3, 99),
            "EIP-712 digest"
        );
        // the dstack hex is 66 lowercase characters without 0x
        vm.assertEq(bytes(lowerHex(derived.pub33)).length, 66, "hex length");
    }

    function test_RegisterByApprovedAndOperator() public {
        vm.prank(alice);
        nft.approve(carol, 1);
        submitAs(carol, makeReg(1, nodeKey));
        vm.assertEq(nft.powerOf(node), 1, "approved account registered");

        vm.prank(alice);
        nft.setApprovalForAll(bob, true);
        submitAs(bob, makeReg(2, nodeKey));
        vm.assertEq(nft.powerOf(node), 2, "operator registered");
        vm.assertEq(nft.nodeInfo(node).owner, alice, "owner is the token owner, not the caller");
    }

    function test_DeadlineIsInclusive() public {
        Reg memory r = makeReg(1, nodeKey);
        vm.warp(r.deadline);
        submitAs(alice, r);
        vm.assertEq(nft.powerOf(node), 1, "registered at the deadline");
    }

    // ------------------------------------------------------------ forgeries

    /// The old prototype's hole: a public, KMS-signed app key reused with an app signature made by
    /// the attacker's own key.
    function test_RevertWhen_AppSignatureNotByGivenAppKey() public {
        uint256 attackerApp = 0xBAD;
        Reg memory r = makeReg(1, nodeKey);
        r.proof.appSignature = dstackSign(attackerApp, appMessage(PURPOSE, key(nodeKey).pub33));
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackMembershipNFT.AppSignatureMismatch.selector, vm.addr(attackerApp), vm.addr(APP_PK)
            )
        );
        submitAs(alice, r);
    }

    function test_RevertWhen_KmsSignatureFromAnotherRoot() public {
        uint256 otherRoot = 0x0707;
        Reg memory r = makeRegWith(1, nodeKey, chain(otherRoot, APP_PK, APP_ID, PURPOSE, nodeKey), URL);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackMembershipNFT.KmsSignatureMismatch.selector, vm.addr(otherRoot), kmsRootAddr
            )
        );
        submitAs(alice, r);
    }

    function test_RevertWhen_KmsRootUnset() public {
        vm.prank(admin);
        nft.setKmsRoot(address(0));
        Reg memory r = makeReg(1, nodeKey);
        vm.expectRevert(DstackMembershipNFT.KmsRootNotSet.selector);
        submitAs(alice, r);
    }

    function test_RevertWhen_AppIdNotAllowed() public {
        bytes20 otherApp = bytes20(uint160(0xABCDEF));
        Reg memory r = makeRegWith(1, nodeKey, chain(KMS_PK, APP_PK, otherApp, PURPOSE, nodeKey), URL);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.AppIdNotAllowed.selector, otherApp));
        submitAs(alice, r);
    }

    /// A chain for another purpose: the app key really signed the derived key, but for another
    /// cluster's purpose string.
    function test_RevertWhen_WrongPurpose() public {
        Reg memory r = makeRegWith(1, nodeKey, chain(KMS_PK, APP_PK, APP_ID, "another-cluster", nodeKey), URL);
        bytes32 wrongMsg = appMessage("another-cluster", key(nodeKey).pub33);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(APP_PK, wrongMsg);
        address recovered = ecrecover(nft.appMessage(r.proof.derivedPublicKey), v, rr, s);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackMembershipNFT.AppSignatureMismatch.selector, recovered, vm.addr(APP_PK)
            )
        );
        submitAs(alice, r);

        // the same chain passes once the cluster's purpose is that one
        vm.prank(admin);
        nft.setPurpose("another-cluster");
        submitAs(alice, r);
        vm.assertEq(nft.powerOf(node), 1, "registered under the matching purpose");
    }

    function test_RevertWhen_HighS_AppSignature() public {
        Reg memory r = makeReg(1, nodeKey);
        r.proof.appSignature = highS(r.proof.appSignature);
        vm.expectRevert(DstackMembershipNFT.SignatureHighS.selector);
        submitAs(alice, r);
    }

    function test_RevertWhen_HighS_KmsSignature() public {
        Reg memory r = makeReg(1, nodeKey);
        r.proof.kmsSignature = highS(r.proof.kmsSignature);
        vm.expectRevert(DstackMembershipNFT.SignatureHighS.selector);
        submitAs(alice, r);
    }

    function test_RevertWhen_HighS_NodeSignature() public {
        Reg memory r = makeReg(1, nodeKey);
        r.nodeSignature = highS(r.nodeSignature);
        vm.expectRevert(DstackMembershipNFT.SignatureHighS.selector);
        submitAs(alice, r);
    }

    function test_RevertWhen_Signature64Bytes() public {
        Reg memory r = makeReg(1, nodeKey);
        bytes memory sig64 = new bytes(64);
        for (uint256 i = 0; i < 64; ++i) {
            sig64[i] = r.proof.appSignature[i];
        }
        r.proof.appSignature = sig64;
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidSignatureLength.selector, 64));
        submitAs(alice, r);
    }

    function test_RevertWhen_Signature66Bytes() public {
        Reg memory r = makeReg(1, nodeKey);
        r.proof.kmsSignature = bytes.concat(r.proof.kmsSignature, hex"00");
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidSignatureLength.selector, 66));
        submitAs(alice, r);

        r = makeReg(1, nodeKey);
        r.nodeSignature = bytes.concat(r.nodeSignature, hex"1b");
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidSignatureLength.selector, 66));
        submitAs(alice, r);
    }

    function test_RevertWhen_EmptyKmsSignature() public {
        Reg memory r = makeReg(1, nodeKey);
        r.proof.kmsSignature = "";
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidSignatureLength.selector, 0));
        submitAs(alice, r);
    }

    function test_RevertWhen_InvalidV() public {
        uint8[4] memory bad = [uint8(2), 26, 29, 255];
        for (uint256 i = 0; i < bad.length; ++i) {
            Reg memory r = makeReg(1, nodeKey);
            r.proof.appSignature = withV(r.proof.appSignature, bad[i]);
            vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidSignatureV.selector, bad[i]));
            submitAs(alice, r);
        }
    }

    function test_RevertWhen_PublicKeyNot64Bytes() public {
        Key memory derived = key(nodeKey);
        // the 65-byte SEC1 form with its 0x04 prefix, and the 33-byte compressed form
        bytes[3] memory bad = [bytes.concat(hex"04", derived.pub64), derived.pub33, new bytes(0)];
        for (uint256 i = 0; i < bad.length; ++i) {
            Reg memory r = makeReg(1, nodeKey);
            r.proof.derivedPublicKey = bad[i];
            vm.expectRevert(
                abi.encodeWithSelector(DstackMembershipNFT.InvalidPublicKeyLength.selector, bad[i].length)
            );
            submitAs(alice, r);

            r = makeReg(1, nodeKey);
            r.proof.appPublicKey = bad[i];
            vm.expectRevert(
                abi.encodeWithSelector(DstackMembershipNFT.InvalidPublicKeyLength.selector, bad[i].length)
            );
            submitAs(alice, r);
        }
    }

    function testFuzz_RevertWhen_PublicKeyLengthNot64(uint256 len, bool appKey) public {
        len = bound(len, 0, 200);
        vm.assume(len != 64);
        Reg memory r = makeReg(1, nodeKey);
        bytes memory k = new bytes(len);
        for (uint256 i = 0; i < len; ++i) {
            k[i] = bytes1(uint8(i + 1));
        }
        if (appKey) r.proof.appPublicKey = k;
        else r.proof.derivedPublicKey = k;
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidPublicKeyLength.selector, len));
        submitAs(alice, r);
    }

    function test_RevertWhen_NodeSignatureByAnotherKey() public {
        Reg memory r = makeReg(1, nodeKey);
        uint256 other = nodePk(2);
        bytes32 digest = nft.registrationDigest(1, alice, INSTANCE, URL, 0, r.deadline);
        r.nodeSignature = dstackSign(other, digest);
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.NodeSignatureMismatch.selector, vm.addr(other), node)
        );
        submitAs(alice, r);
    }

    function test_RevertWhen_SignedForAnotherChainId() public {
        Reg memory r = makeReg(1, nodeKey);
        r.nodeSignature = dstackSign(
            nodeKey, digestFor(address(nft), block.chainid + 1, 1, alice, INSTANCE, URL, 0, r.deadline)
        );
        _expectNodeMismatch();
        submitAs(alice, r);
    }

    function test_RevertWhen_SignedForAnotherContract() public {
        Reg memory r = makeReg(1, nodeKey);
        r.nodeSignature = dstackSign(
            nodeKey, digestFor(address(0xC0DE), block.chainid, 1, alice, INSTANCE, URL, 0, r.deadline)
        );
        _expectNodeMismatch();
        submitAs(alice, r);
    }

    function test_RevertWhen_ChainIdChangesAfterSigning() public {
        Reg memory r = makeReg(1, nodeKey);
        vm.chainId(block.chainid + 5);
        _expectNodeMismatch();
        submitAs(alice, r);
    }

    function test_RevertWhen_SignedFieldsAltered() public {
        Reg memory r = makeReg(1, nodeKey);
        r.url = "/ip4/10.6.6.6/tcp/1";
        _expectNodeMismatch();
        submitAs(alice, r);

        r = makeReg(1, nodeKey);
        r.instanceId = bytes20(uint160(1));
        _expectNodeMismatch();
        submitAs(alice, r);

        r = makeReg(1, nodeKey);
        r.deadline += 1;
        _expectNodeMismatch();
        submitAs(alice, r);

        // signed for token 1 (owner alice), submitted for token 2 (also alice's)
        r = makeReg(1, nodeKey);
        r.tokenId = 2;
        _expectNodeMismatch();
        submitAs(alice, r);
    }

    function test_RevertWhen_Replayed() public {
        Reg memory r = makeReg(1, nodeKey);
        submitAs(alice, r);
        vm.prank(alice);
        nft.deregisterNode(1);
        // same signed registration again: the nonce moved on
        _expectNodeMismatch();
        submitAs(alice, r);
        // a fresh signature with the new nonce works
        submitAs(alice, makeReg(1, nodeKey));
        vm.assertEq(nft.nonces(node), 2, "nonce twice used");
    }

    function test_RevertWhen_Expired() public {
        Reg memory r = makeReg(1, nodeKey);
        vm.warp(r.deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackMembershipNFT.RegistrationExpired.selector, r.deadline, r.deadline + 1
            )
        );
        submitAs(alice, r);
    }

    function test_RevertWhen_CallerNeitherOwnerNorApproved() public {
        Reg memory r = makeReg(1, nodeKey);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.NotTokenOwnerOrApproved.selector, bob));
        submitAs(bob, r);
    }

    function test_RevertWhen_TokenDoesNotExist() public {
        Reg memory r = makeReg(1, nodeKey);
        r.tokenId = 99;
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 99));
        submitAs(alice, r);
    }

    function test_RevertWhen_TokenAlreadyAuthorizesNode() public {
        submitAs(alice, makeReg(1, nodeKey));
        uint256 other = nodePk(2);
        Reg memory r = makeReg(1, other);
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.TokenAlreadyAuthorizesNode.selector, 1, node)
        );
        submitAs(alice, r);
        // also for the same node again
        r = makeReg(1, nodeKey);
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.TokenAlreadyAuthorizesNode.selector, 1, node)
        );
        submitAs(alice, r);
    }

    function test_RevertWhen_TokenOfAnotherOwnerAddedToNode() public {
        submitAs(alice, makeReg(1, nodeKey));
        Reg memory r = makeReg(4, nodeKey); // bob's token
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.NodeOwnedByAnotherOwner.selector, node, alice)
        );
        submitAs(bob, r);
    }

    function test_RevertWhen_UrlTooLong() public {
        // "/dns4/" + host + "/tcp/1": a well-formed URL of 257 bytes
        bytes memory long = bytes(string.concat("/dns4/", string(new bytes(245)), "/tcp/1"));
        for (uint256 i = 6; i < 251; ++i) {
            long[i] = "a";
        }
        vm.assertEq(long.length, 257, "257 bytes");
        Reg memory r = makeRegWith(1, nodeKey, proofFor(nodeKey), string(long));
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.UrlTooLong.selector, 257, 256));
        submitAs(alice, r);

        // 256 bytes is fine: one host byte less
        bytes memory fits = bytes.concat(new bytes(250), "/tcp/1");
        for (uint256 i = 0; i < 250; ++i) {
            fits[i] = long[i];
        }
        submitAs(alice, makeRegWith(1, nodeKey, proofFor(nodeKey), string(fits)));
        vm.assertEq(nft.getPeers(0, 1)[0].connectionUrl, string(fits), "256-byte url stored");
    }

    function test_DeadlineWindowIsInclusive() public {
        Reg memory r = makeReg(1, nodeKey);
        r.deadline = block.timestamp + nft.MAX_DEADLINE_WINDOW();
        r.nodeSignature = _signNode(nodeKey, r, false);
        submitAs(alice, r);
        vm.assertEq(nft.powerOf(node), 1, "registered with a deadline one window ahead");
    }

    /// A registration signed to stay valid for ever (or for years) is refused: a leaked one could
    /// otherwise be submitted at any later time.
    function test_RevertWhen_DeadlineTooFar() public {
        vm.assertEq(nft.MAX_DEADLINE_WINDOW(), 1 days, "window");
        uint256 maxDeadline = block.timestamp + 1 days;
        uint256[3] memory far = [maxDeadline + 1, block.timestamp + 3650 days, type(uint256).max];
        for (uint256 i = 0; i < far.length; ++i) {
            Reg memory r = makeReg(1, nodeKey);
            r.deadline = far[i];
            r.nodeSignature = _signNode(nodeKey, r, false);
            vm.expectRevert(
                abi.encodeWithSelector(DstackMembershipNFT.DeadlineTooFar.selector, far[i], maxDeadline)
            );
            submitAs(alice, r);
        }
    }

    // ------------------------------------------------------------ fuzz

    /// Any valid chain (random KMS root, app key, derived key, app id, purpose) registers, and the
    /// node gets exactly the derived key's address.
    function testFuzz_ValidChainAlwaysRegisters(
        uint256 kmsPk,
        uint256 appPk,
        uint256 derivedPk,
        bytes20 appId,
        bytes20 instanceId,
        bool ethV
    ) public {
        kmsPk = bound(kmsPk, 1, SECP256K1_N - 1);
        appPk = bound(appPk, 1, SECP256K1_N - 1);
        derivedPk = bound(derivedPk, 1, SECP256K1_N - 1);
        vm.startPrank(admin);
        nft.setKmsRoot(vm.addr(kmsPk));
        nft.setAppIdAllowed(appId, true);
        vm.stopPrank();

        Reg memory r = makeRegWith(2, derivedPk, chain(kmsPk, appPk, appId, PURPOSE, derivedPk), URL);
        r.instanceId = instanceId;
        r.nodeSignature = _signNode(derivedPk, r, ethV);
        submitAs(alice, r);
        vm.assertEq(nft.nodeOf(2), vm.addr(derivedPk), "node address is the derived key's");
        vm.assertEq(nft.powerOf(vm.addr(derivedPk)), 1, "power");
    }

    /// Flipping any bit of any signature or key of a valid registration makes it fail.
    function testFuzz_RevertWhen_AnyBitFlipped(uint256 which, uint256 bytePos, uint8 bit) public {
        Reg memory r = makeReg(1, nodeKey);
        which = bound(which, 0, 4);
        bytes memory target = which == 0
            ? r.proof.appSignature
            : which == 1
                ? r.proof.kmsSignature
                : which == 2 ? r.nodeSignature : which == 3 ? r.proof.appPublicKey : r.proof.derivedPublicKey;
        bytePos = bound(bytePos, 0, target.length - 1);
        target[bytePos] = target[bytePos] ^ bytes1(uint8(1) << (bit % 8));
        vm.prank(alice);
        vm.expectRevert();
        submit(r);
    }

    /// A random app id only registers when allowed; a random KMS key only when it is the root.
    function testFuzz_RejectsUnpinnedAppIdAndRoot(bytes20 appId, uint256 kmsPk) public {
        kmsPk = bound(kmsPk, 1, SECP256K1_N - 1);
        vm.assume(appId != APP_ID && kmsPk != KMS_PK);
        Reg memory r = makeRegWith(1, nodeKey, chain(KMS_PK, APP_PK, appId, PURPOSE, nodeKey), URL);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.AppIdNotAllowed.selector, appId));
        submitAs(alice, r);

        r = makeRegWith(1, nodeKey, chain(kmsPk, APP_PK, APP_ID, PURPOSE, nodeKey), URL);
        vm.expectRevert(
            abi.encodeWithSelector(
                DstackMembershipNFT.KmsSignatureMismatch.selector, vm.addr(kmsPk), kmsRootAddr
            )
        );
        submitAs(alice, r);
    }

    // ------------------------------------------------------------ helpers

    function _signNode(uint256 derivedPk, Reg memory r, bool ethV) internal view returns (bytes memory sig) {
        uint256 nonce = nft.nonces(vm.addr(derivedPk));
        sig = dstackSign(
            derivedPk,
            nft.registrationDigest(r.tokenId, nft.ownerOf(r.tokenId), r.instanceId, r.url, nonce, r.deadline)
        );
        if (ethV) sig = withV(sig, uint8(sig[64]) + 27);
    }

    /// @dev The recovered address is some unrelated key: match the error's selector only.
    function _expectNodeMismatch() internal {
        vm.expectPartialRevert(DstackMembershipNFT.NodeSignatureMismatch.selector);
    }

    function assertTrueV01(bytes memory sig) internal pure {
        vm.assertEq(sig.length, 65, "65-byte signature");
        vm.assertTrue(uint8(sig[64]) <= 1, "dstack v is 0 or 1");
    }
}
