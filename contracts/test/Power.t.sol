// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Vm} from "./utils/Cheats.sol";
import {MembershipBase} from "./utils/MembershipBase.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";

/// @notice Voting power, the end of authorizations, trust-root changes, views and events.
contract PowerTest is MembershipBase {
    function test_SeveralTokensOfOneOwnerAddPower() public {
        address n = register(1, nodePk(1));
        submitAs(alice, makeRegWith(2, nodePk(1), proofFor(nodePk(1)), "/dns4/new.example/tcp/1"));
        register(3, nodePk(1));
        vm.assertEq(nft.powerOf(n), 3, "three tokens, power three");
        vm.assertEq(nft.validatorCount(), 1, "still one validator");
        vm.assertEq(nft.totalPower(), 3, "total power");
        vm.assertEq(nft.nodeCount(), 1, "one node record");
    }

    function test_ReRegistrationUpdatesUrl() public {
        address n = register(1, nodePk(1));
        submitAs(alice, makeRegWith(2, nodePk(1), proofFor(nodePk(1)), "/dns4/new.example/tcp/1"));
        vm.assertEq(nft.nodeInfo(n).connectionUrl, "/dns4/new.example/tcp/1", "url refreshed");
    }

    function test_TransferEndsAuthorization() public {
        address n = register(1, nodePk(1));
        register(2, nodePk(1));
        vm.expectEmit(true, true, false, true, address(nft));
        emit DstackMembershipNFT.NodeAuthorizationEnded(1, n, DstackMembershipNFT.EndReason.Transferred);
        vm.prank(alice);
        nft.transferFrom(alice, bob, 1);
        vm.assertEq(nft.nodeOf(1), address(0), "token 1 authorizes nothing");
        vm.assertEq(nft.powerOf(n), 1, "power reduced");
        vm.assertEq(nft.totalPower(), 1, "total reduced");

        // the new owner cannot add the token to alice's node, but can register its own node
        Reg memory r = makeReg(1, nodePk(1));
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.NodeOwnedByAnotherOwner.selector, n, alice)
        );
        submitAs(bob, r);
        address m = register(1, nodePk(2));
        vm.assertEq(nft.nodeInfo(m).owner, bob, "bob's node");
    }

    function test_SafeTransferEndsAuthorizationAndLastTokenRemovesNode() public {
        address n = register(1, nodePk(1));
        vm.expectEmit(true, true, false, true, address(nft));
        emit DstackMembershipNFT.NodeRemoved(n, alice);
        vm.prank(alice);
        nft.safeTransferFrom(alice, carol, 1);
        vm.assertEq(nft.powerOf(n), 0, "no power");
        vm.assertEq(nft.validatorCount(), 0, "no validators");
        vm.assertEq(nft.nodeCount(), 0, "record removed");
        vm.assertEq(nft.nodeInfo(n).owner, address(0), "record cleared");
        vm.assertEq(nft.nonces(n), 1, "nonce survives the record");
    }

    function test_BurnEndsAuthorization() public {
        address n = register(1, nodePk(1));
        register(2, nodePk(1));
        vm.expectEmit(true, true, false, true, address(nft));
        emit DstackMembershipNFT.NodeAuthorizationEnded(2, n, DstackMembershipNFT.EndReason.Burned);
        vm.prank(alice);
        nft.burn(2);
        vm.assertEq(nft.powerOf(n), 1, "power reduced by burn");
        vm.assertEq(nft.balanceOf(alice), 2, "burned");
        // an approved account may burn too; a stranger may not
        vm.prank(alice);
        nft.approve(bob, 1);
        vm.prank(carol);
        vm.expectRevert();
        nft.burn(1);
        vm.prank(bob);
        nft.burn(1);
        vm.assertEq(nft.validatorCount(), 0, "last token burned");
        vm.assertEq(nft.totalMinted(), 6, "burning does not change totalMinted");
    }

    function test_Deregister() public {
        address n = register(1, nodePk(1));
        vm.expectEmit(true, true, false, true, address(nft));
        emit DstackMembershipNFT.NodeAuthorizationEnded(1, n, DstackMembershipNFT.EndReason.Deregistered);
        vm.prank(alice);
        nft.deregisterNode(1);
        vm.assertEq(nft.nodeOf(1), address(0), "deregistered");
        vm.assertEq(nft.validatorCount(), 0, "gone");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.TokenAuthorizesNoNode.selector, 1));
        nft.deregisterNode(1);

        register(1, nodePk(1));
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.NotTokenOwnerOrApproved.selector, bob));
        nft.deregisterNode(1);
    }

    function test_DisallowingAppIdRemovesNodesFromViews() public {
        register(1, nodePk(1));
        address m = register(4, nodePk(2));
        register(5, nodePk(2));
        vm.assertEq(nft.totalPower(), 3, "before");

        vm.prank(admin);
        nft.setAppIdAllowed(APP_ID, false);
        vm.assertEq(nft.validatorCount(), 0, "no validator counted");
        vm.assertEq(nft.totalPower(), 0, "no power counted");
        vm.assertEq(nft.powerOf(m), 0, "node power 0");
        vm.assertEq(nft.validators(0, 100).length, 0, "validators empty");
        vm.assertEq(nft.getPeers(0, 100).length, 0, "peers empty");
        vm.assertEq(nft.nodeInfo(m).tokens, 2, "tokens still recorded");
        vm.assertFalse(nft.nodeInfo(m).counted, "not counted");

        vm.prank(admin);
        nft.setAppIdAllowed(APP_ID, true);
        vm.assertEq(nft.totalPower(), 3, "counted again");
    }

    function test_OnlyNodesOfDisallowedAppDrop() public {
        bytes20 app2 = bytes20(uint160(0xA2));
        vm.prank(admin);
        nft.setAppIdAllowed(app2, true);
        address n = register(1, nodePk(1));
        address m = nodeOfApp(4, nodePk(2), app2);
        vm.prank(admin);
        nft.setAppIdAllowed(APP_ID, false);
        vm.assertEq(nft.validatorCount(), 1, "only app2's node");
        vm.assertEq(nft.validators(0, 10)[0].node, m, "app2 node listed");
        vm.assertEq(nft.powerOf(n), 0, "app1 node dropped");
    }

    function test_RotatingKmsRootRemovesNodesUntilReRegistered() public {
        address n = register(1, nodePk(1));
        register(2, nodePk(1));
        uint256 newRootPk = 0x2222;
        vm.prank(admin);
        vm.expectEmit(true, true, false, false, address(nft));
        emit DstackMembershipNFT.KmsRootUpdated(kmsRootAddr, vm.addr(newRootPk));
        nft.setKmsRoot(vm.addr(newRootPk));
        vm.assertEq(nft.totalPower(), 0, "old-root nodes count for nothing");
        vm.assertEq(nft.powerOf(n), 0, "node uncounted");

        // re-verifying the same key under the new root with another token counts all its tokens
        submitAs(alice, makeRegWith(3, nodePk(1), chain(newRootPk, APP_PK, APP_ID, PURPOSE, nodePk(1)), URL));
        vm.assertEq(nft.powerOf(n), 3, "re-verified under the new root");
        vm.assertEq(nft.nodeInfo(n).kmsRoot, vm.addr(newRootPk), "stored root updated");

        // rotating back does not resurrect it: it was last verified under the new root
        vm.prank(admin);
        nft.setKmsRoot(kmsRootAddr);
        vm.assertEq(nft.totalPower(), 0, "verified under the other root");
    }

    function test_ChangingPurposeRemovesNodesUntilReRegistered() public {
        address n = register(1, nodePk(1));
        register(2, nodePk(1));
        address m = register(4, nodePk(2));
        string memory other = "dstack-nft-cluster-v2";
        vm.prank(admin);
        nft.setPurpose(other);
        vm.assertEq(nft.validatorCount(), 0, "old-purpose nodes are not validators");
        vm.assertEq(nft.totalPower(), 0, "old-purpose nodes count for nothing");
        vm.assertEq(nft.powerOf(n), 0, "node uncounted");
        vm.assertEq(nft.validators(0, 100).length, 0, "validators empty");
        vm.assertEq(nft.getPeers(0, 100).length, 0, "peers empty");
        vm.assertFalse(nft.nodeInfo(n).counted, "not counted");
        vm.assertEq(nft.nodeInfo(n).purposeHash, keccak256(bytes(PURPOSE)), "verified under the old one");
        vm.assertEq(nft.nodeInfo(n).tokens, 2, "tokens still recorded");

        // re-verifying the key under the new purpose with another token counts all its tokens
        submitAs(alice, makeRegWith(3, nodePk(1), chain(KMS_PK, APP_PK, APP_ID, other, nodePk(1)), URL));
        vm.assertEq(nft.powerOf(n), 3, "re-verified under the new purpose");
        vm.assertEq(nft.nodeInfo(n).purposeHash, keccak256(bytes(other)), "stored purpose updated");
        vm.assertEq(nft.validatorCount(), 1, "one validator");
        vm.assertEq(nft.totalPower(), 3, "its power");
        vm.assertEq(nft.validators(0, 100)[0].node, n, "listed");
        vm.assertEq(nft.powerOf(m), 0, "the other node still uncounted");

        // setting the purpose back counts the node still verified under it, not the re-verified one
        vm.prank(admin);
        nft.setPurpose(PURPOSE);
        vm.assertEq(nft.powerOf(m), 1, "old-purpose node counts again");
        vm.assertEq(nft.powerOf(n), 0, "verified under the other purpose");
        vm.assertEq(nft.totalPower(), 1, "total");
        vm.assertEq(nft.getPeers(0, 100)[0].node, m, "peer");
    }

    function test_AllowedAppIdsAreBounded() public {
        uint256 max = nft.MAX_ALLOWED_APP_IDS();
        vm.startPrank(admin);
        for (uint256 i = 1; i < max; ++i) {
            nft.setAppIdAllowed(bytes20(uint160(i)), true);
        }
        vm.assertEq(nft.allowedAppIds().length, max, "full (APP_ID and the others)");
        nft.setAppIdAllowed(APP_ID, true); // already allowed: no change
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.TooManyAllowedAppIds.selector, max));
        nft.setAppIdAllowed(bytes20(uint160(max)), true);
        // disallowing frees a place; disallowing twice changes nothing
        nft.setAppIdAllowed(bytes20(uint160(1)), false);
        nft.setAppIdAllowed(bytes20(uint160(1)), false);
        vm.assertFalse(nft.isAppIdAllowed(bytes20(uint160(1))), "disallowed");
        nft.setAppIdAllowed(bytes20(uint160(max)), true);
        vm.stopPrank();
        bytes20[] memory ids = nft.allowedAppIds();
        vm.assertEq(ids.length, max, "full again");
        for (uint256 i = 0; i < ids.length; ++i) {
            vm.assertTrue(nft.isAppIdAllowed(ids[i]), "listed ids are allowed");
            vm.assertTrue(ids[i] != bytes20(uint160(1)), "the disallowed id is not listed");
        }
    }

    function test_NodeMovesBetweenGroupsOnReRegistration() public {
        // a node of APP_ID re-verified as a node of app2 leaves APP_ID's list
        bytes20 app2 = bytes20(uint160(0xA2));
        vm.prank(admin);
        nft.setAppIdAllowed(app2, true);
        address a = register(1, nodePk(1));
        address b = register(4, nodePk(2));
        nodeOfApp(2, nodePk(1), app2);
        vm.assertEq(nft.validatorCount(), 2, "two nodes");
        vm.assertEq(nft.totalPower(), 3, "a has two tokens");
        vm.assertEq(bytes32(nft.nodeInfo(a).appId), bytes32(app2), "a is app2's now");
        vm.prank(admin);
        nft.setAppIdAllowed(app2, false);
        vm.assertEq(nft.powerOf(a), 0, "a dropped with app2");
        vm.assertEq(nft.validators(0, 10).length, 1, "b alone");
        vm.assertEq(nft.validators(0, 10)[0].node, b, "b");
        vm.prank(alice);
        nft.deregisterNode(1);
        vm.prank(admin);
        nft.setAppIdAllowed(app2, true);
        vm.assertEq(nft.powerOf(a), 1, "one token left");
        vm.assertEq(nft.totalPower(), 2, "a 1 + b 1");
        vm.assertEq(nft.nodeCount(), 2, "two records");
    }

    function test_PaginationAtTheEdges() public {
        // five nodes: alice 1,2,3 -> three nodes; bob 4 and carol 6 -> two more
        address[5] memory nodes = [
            register(1, nodePk(1)),
            register(2, nodePk(2)),
            register(3, nodePk(3)),
            register(4, nodePk(4)),
            register(6, nodePk(5))
        ];
        vm.assertEq(nft.validatorCount(), 5, "five");
        for (uint256 offset = 0; offset <= 6; ++offset) {
            for (uint256 limit = 0; limit <= 6; ++limit) {
                DstackMembershipNFT.ValidatorInfo[] memory page = nft.validators(offset, limit);
                DstackMembershipNFT.Peer[] memory peers = nft.getPeers(offset, limit);
                uint256 expected = offset >= 5 ? 0 : (5 - offset < limit ? 5 - offset : limit);
                vm.assertEq(page.length, expected, "page length");
                vm.assertEq(peers.length, expected, "peer page length");
                for (uint256 i = 0; i < expected; ++i) {
                    vm.assertEq(page[i].node, nodes[offset + i], "list order");
                    vm.assertEq(peers[i].node, nodes[offset + i], "peer order");
                }
            }
        }
        vm.assertEq(nft.validators(type(uint256).max, 100).length, 0, "huge offset");
    }

    function test_PaginationSkipsUncountedNodes() public {
        bytes20 app2 = bytes20(uint160(0xA2));
        vm.prank(admin);
        nft.setAppIdAllowed(app2, true);
        address a = register(1, nodePk(1));
        nodeOfApp(2, nodePk(2), app2);
        address c = register(3, nodePk(3));
        nodeOfApp(4, nodePk(4), app2);
        address e = register(6, nodePk(5));
        vm.prank(admin);
        nft.setAppIdAllowed(app2, false);

        vm.assertEq(nft.validatorCount(), 3, "three counted");
        DstackMembershipNFT.ValidatorInfo[] memory all = nft.validators(0, 100);
        vm.assertEq(all.length, 3, "three listed");
        vm.assertEq(all[0].node, a, "a");
        vm.assertEq(all[1].node, c, "c");
        vm.assertEq(all[2].node, e, "e");
        DstackMembershipNFT.ValidatorInfo[] memory page = nft.validators(1, 1);
        vm.assertEq(page.length, 1, "one");
        vm.assertEq(page[0].node, c, "offset counts counted nodes only");
        vm.assertEq(nft.getPeers(2, 5)[0].node, e, "peers skip uncounted too");
    }

    function test_SwapAndPopKeepsListConsistent() public {
        address a = register(1, nodePk(1));
        address b = register(4, nodePk(2));
        address c = register(6, nodePk(3));
        vm.prank(alice);
        nft.deregisterNode(1); // c moves into a's slot
        DstackMembershipNFT.Peer[] memory peers = nft.getPeers(0, 10);
        vm.assertEq(peers.length, 2, "two left");
        vm.assertEq(peers[0].node, c, "last moved to the front");
        vm.assertEq(peers[1].node, b, "b stays");
        vm.prank(carol);
        nft.deregisterNode(6);
        vm.prank(bob);
        nft.deregisterNode(4);
        vm.assertEq(nft.nodeCount(), 0, "empty");
        vm.assertEq(nft.nodeInfo(a).tokens, 0, "a cleared");
    }

    function test_RevertWhen_PageLimitOver100() public {
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.LimitTooLarge.selector, 101, 100));
        nft.validators(0, 101);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.LimitTooLarge.selector, 101, 100));
        nft.getPeers(0, 101);
        nft.validators(0, 100);
        nft.getPeers(0, 100);
    }

    function test_UpdateConnectionUrl() public {
        address n = register(1, nodePk(1));
        vm.expectEmit(true, true, false, true, address(nft));
        emit DstackMembershipNFT.ConnectionUrlUpdated(n, alice, "/dns4/a.example/tcp/9");
        vm.prank(alice);
        nft.updateConnectionUrl(n, "/dns4/a.example/tcp/9");
        vm.assertEq(nft.getPeers(0, 1)[0].connectionUrl, "/dns4/a.example/tcp/9", "updated");

        vm.prank(alice);
        nft.setApprovalForAll(carol, true);
        vm.prank(carol);
        nft.updateConnectionUrl(n, "/dns4/b.example/tcp/9");
        vm.assertEq(nft.validators(0, 1)[0].connectionUrl, "/dns4/b.example/tcp/9", "operator updated");

        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.NotTokenOwnerOrApproved.selector, bob));
        nft.updateConnectionUrl(n, "x");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.UrlTooLong.selector, 300, 256));
        nft.updateConnectionUrl(n, string(new bytes(300)));

        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.NodeNotRegistered.selector, address(0x1234))
        );
        nft.updateConnectionUrl(address(0x1234), "x");
    }

    function test_RegisterEventCarriesIndexerFields() public {
        Reg memory r = makeReg(1, nodePk(1));
        address n = vm.addr(nodePk(1));
        vm.recordLogs();
        submitAs(alice, r);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        vm.assertEq(logs.length, 1, "one event");
        vm.assertEq(logs[0].emitter, address(nft), "emitter");
        vm.assertEq(logs[0].topics[0], DstackMembershipNFT.NodeRegistered.selector, "event");
        vm.assertEq(logs[0].topics[1], bytes32(uint256(1)), "tokenId indexed");
        vm.assertEq(logs[0].topics[2], bytes32(uint256(uint160(n))), "node indexed");
        vm.assertEq(logs[0].topics[3], bytes32(uint256(uint160(alice))), "owner indexed");
        (bytes20 appId, bytes20 instanceId, string memory url, bytes memory pub, uint256 power) =
            abi.decode(logs[0].data, (bytes20, bytes20, string, bytes, uint256));
        vm.assertEq(bytes32(appId), bytes32(APP_ID), "appId");
        vm.assertEq(bytes32(instanceId), bytes32(INSTANCE), "instanceId");
        vm.assertEq(url, URL, "url");
        vm.assertEq(pub, r.proof.derivedPublicKey, "public key");
        vm.assertEq(power, 1, "power after");
    }

    // ------------------------------------------------------------ fuzz: power accounting

    /// Random registrations, deregistrations, transfers and burns over six tokens and four node
    /// keys; after every step the contract's power equals a model kept here.
    function testFuzz_PowerAccounting(uint256 seed) public {
        address[3] memory owners = [alice, bob, carol];
        address[7] memory model; // token -> node (index 1..6)
        for (uint256 step = 0; step < 12; ++step) {
            uint256 rnd = uint256(keccak256(abi.encode(seed, step)));
            uint256 tokenId = rnd % 6 + 1;
            uint256 op = (rnd >> 8) % 4;
            bool exists = model[tokenId] != address(0) || _exists(tokenId);
            if (!exists) continue;
            address tokenOwner = nft.ownerOf(tokenId);
            if (op == 0 && model[tokenId] == address(0)) {
                uint256 k = nodePk((rnd >> 16) % 4);
                address n = vm.addr(k);
                DstackMembershipNFT.NodeInfo memory info = nft.nodeInfo(n);
                if (info.tokens > 0 && info.owner != tokenOwner) continue;
                register(tokenId, k);
                model[tokenId] = n;
            } else if (op == 1 && model[tokenId] != address(0)) {
                vm.prank(tokenOwner);
                nft.deregisterNode(tokenId);
                model[tokenId] = address(0);
            } else if (op == 2) {
                address to = owners[(rnd >> 24) % 3];
                vm.prank(tokenOwner);
                nft.transferFrom(tokenOwner, to, tokenId);
                model[tokenId] = address(0);
            } else if (op == 3) {
                vm.prank(tokenOwner);
                nft.burn(tokenId);
                model[tokenId] = address(0);
            }
            _checkModel(model);
        }
    }

    function _exists(uint256 tokenId) private view returns (bool) {
        try nft.ownerOf(tokenId) returns (address) {
            return true;
        } catch {
            return false;
        }
    }

    function _checkModel(address[7] memory model) private view {
        uint256 total;
        for (uint256 k = 0; k < 4; ++k) {
            address n = vm.addr(nodePk(k));
            uint256 expected;
            for (uint256 t = 1; t <= 6; ++t) {
                if (model[t] == n) ++expected;
            }
            vm.assertEq(nft.powerOf(n), expected, "node power matches the model");
            total += expected;
        }
        for (uint256 t = 1; t <= 6; ++t) {
            vm.assertEq(nft.nodeOf(t), model[t], "nodeOf matches the model");
        }
        vm.assertEq(nft.totalPower(), total, "total power matches the model");
    }

    function nodeOfApp(uint256 tokenId, uint256 pk, bytes20 appId) internal returns (address) {
        submitAs(
            nft.ownerOf(tokenId), makeRegWith(tokenId, pk, chain(KMS_PK, APP_PK, appId, PURPOSE, pk), URL)
        );
        return vm.addr(pk);
    }
}
