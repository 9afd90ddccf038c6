// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";

/// @notice Connection URLs: only multiaddrs of the shape nodes dial are stored, on registration and
/// on update. The cases are shared with the membership crate (test/fixtures/connection_urls.json),
/// so the contract and the Rust check cannot drift apart.
contract ConnectionUrlTest is MembershipBase {
    string internal constant CASES = "/test/fixtures/connection_urls.json";

    function test_SharedValidUrlsAreAccepted() public {
        string[] memory valid = vm.parseJsonStringArray(_cases(), ".valid");
        vm.assertTrue(valid.length >= 10, "cases loaded");
        address n = register(1, nodePk(1));
        for (uint256 i = 0; i < valid.length; ++i) {
            vm.prank(alice);
            nft.updateConnectionUrl(n, valid[i]);
            vm.assertEq(nft.nodeInfo(n).connectionUrl, valid[i], "stored");
        }
        // and on registration
        submitAs(bob, makeRegWith(4, nodePk(2), proofFor(nodePk(2)), valid[valid.length - 1]));
        vm.assertEq(nft.nodeInfo(vm.addr(nodePk(2))).connectionUrl, valid[valid.length - 1], "registered");
    }

    function test_RevertWhen_SharedInvalidUrlOnUpdate() public {
        string memory json = _cases();
        string[] memory invalid = vm.parseJsonStringArray(json, ".invalid");
        uint256[] memory positions = vm.parseJsonUintArray(json, ".invalidPositions");
        vm.assertEq(invalid.length, positions.length, "one position per case");
        vm.assertTrue(invalid.length >= 20, "cases loaded");
        address n = register(1, nodePk(1));
        for (uint256 i = 0; i < invalid.length; ++i) {
            vm.prank(alice);
            vm.expectRevert(
                abi.encodeWithSelector(DstackMembershipNFT.InvalidConnectionUrl.selector, positions[i])
            );
            nft.updateConnectionUrl(n, invalid[i]);
        }
        vm.assertEq(nft.nodeInfo(n).connectionUrl, URL, "unchanged");
    }

    function test_RevertWhen_SharedInvalidUrlOnRegistration() public {
        string memory json = _cases();
        string[] memory invalid = vm.parseJsonStringArray(json, ".invalid");
        uint256[] memory positions = vm.parseJsonUintArray(json, ".invalidPositions");
        for (uint256 i = 0; i < invalid.length; ++i) {
            Reg memory r = makeRegWith(1, nodePk(1), proofFor(nodePk(1)), invalid[i]);
            vm.expectRevert(
                abi.encodeWithSelector(DstackMembershipNFT.InvalidConnectionUrl.selector, positions[i])
            );
            submitAs(alice, r);
        }
        vm.assertEq(nft.nodeCount(), 0, "nothing registered");
    }

    /// Any byte outside printable ASCII (or a space) anywhere in an otherwise valid URL is refused
    /// at its offset.
    function testFuzz_RevertWhen_UnprintableByte(uint256 pos, uint8 c) public {
        vm.assume(c < 0x21 || c > 0x7e);
        bytes memory url = bytes("/dns4/node.example/tcp/26656/p2p/abc");
        pos = bound(pos, 0, url.length - 1);
        url[pos] = bytes1(c);
        address n = register(1, nodePk(1));
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.InvalidConnectionUrl.selector, pos));
        nft.updateConnectionUrl(n, string(url));
    }

    /// Every port 1..65535 is accepted, in any of the two transports.
    function testFuzz_AnyPortInRange(uint16 port, bool udp) public {
        vm.assume(port != 0);
        string memory url = string.concat("/ip4/10.1.2.3/", udp ? "udp/" : "tcp/", vm.toString(uint256(port)));
        address n = register(1, nodePk(1));
        vm.prank(alice);
        nft.updateConnectionUrl(n, url);
        vm.assertEq(nft.nodeInfo(n).connectionUrl, url, "stored");
    }

    function _cases() internal view returns (string memory) {
        string memory path = string.concat(vm.projectRoot(), CASES);
        vm.assertTrue(vm.exists(path), "contracts/test/fixtures/connection_urls.json is missing");
        return vm.readFile(path);
    }
}
