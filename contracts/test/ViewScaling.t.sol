// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";

/// @notice The views' cost does not grow with the number of nodes (the oracle reads every page of
/// `validators` at one block, so a view linear in the node count makes reading the whole set
/// quadratic, and past a few thousand nodes no page fits an RPC's eth_call gas cap).
contract ViewScalingTest is MembershipBase {
    struct Costs {
        uint256 validatorCount;
        uint256 totalPower;
        uint256 lastValidatorsPage;
        uint256 lastPeersPage;
        uint256 powerOf;
    }

    function test_ViewCostIndependentOfNodeCount() public {
        registerMany(100);
        Costs memory at100 = _measure(100);
        registerMany(400);
        Costs memory at500 = _measure(500);
        _assertFlat(at100.validatorCount, at500.validatorCount, "validatorCount");
        _assertFlat(at100.totalPower, at500.totalPower, "totalPower");
        _assertFlat(at100.lastValidatorsPage, at500.lastValidatorsPage, "last validators page");
        _assertFlat(at100.lastPeersPage, at500.lastPeersPage, "last getPeers page");
        _assertFlat(at100.powerOf, at500.powerOf, "powerOf");
    }

    /// Also with nodes that do not count (another app id, disallowed): they cost nothing to skip.
    function test_UncountedNodesCostNothingToSkip() public {
        bytes20 app2 = bytes20(uint160(0xA2));
        registerMany(100);
        Costs memory before = _measure(100);
        vm.prank(admin);
        nft.setAppIdAllowed(app2, true);
        uint256 first = nft.totalMinted() + 1;
        vm.prank(admin);
        nft.mintBatch(carol, 300);
        for (uint256 i = 0; i < 300; ++i) {
            uint256 pk = nodePk(10_000 + i);
            submitAs(carol, makeRegWith(first + i, pk, chain(KMS_PK, APP_PK, app2, PURPOSE, pk), URL));
        }
        vm.prank(admin);
        nft.setAppIdAllowed(app2, false);
        Costs memory afterUncounted = _measure(100);
        _assertFlat(before.validatorCount, afterUncounted.validatorCount, "validatorCount");
        _assertFlat(before.lastValidatorsPage, afterUncounted.lastValidatorsPage, "validators page");
    }

    function _measure(uint256 expectedCount) internal view returns (Costs memory c) {
        vm.assertEq(nft.validatorCount(), expectedCount, "count");
        vm.assertEq(nft.totalPower(), expectedCount, "power");
        vm.assertEq(nft.validators(expectedCount - 100, 100).length, 100, "last page");
        address last = nft.getPeers(expectedCount - 1, 1)[0].node;
        c.validatorCount = _gasOf(abi.encodeCall(nft.validatorCount, ()));
        c.totalPower = _gasOf(abi.encodeCall(nft.totalPower, ()));
        c.lastValidatorsPage = _gasOf(abi.encodeCall(nft.validators, (expectedCount - 100, 100)));
        c.lastPeersPage = _gasOf(abi.encodeCall(nft.getPeers, (expectedCount - 100, 100)));
        c.powerOf = _gasOf(abi.encodeCall(nft.powerOf, (last)));
    }

    /// @dev Gas of a static call to the NFT, without copying its answer into this contract's
    /// memory (which has grown with every registration, so copying would cost more at 500 nodes).
    function _gasOf(bytes memory data) internal view returns (uint256 used) {
        address target = address(nft);
        bool ok;
        uint256 before = gasleft();
        assembly ("memory-safe") {
            ok := staticcall(gas(), target, add(data, 32), mload(data), 0, 0)
        }
        used = before - gasleft();
        vm.assertTrue(ok, "view call succeeded");
    }

    /// The cost at 500 nodes is within 10 % of the cost at 100 (storage is warm in both: one test
    /// transaction).
    function _assertFlat(uint256 small, uint256 large, string memory what) internal pure {
        vm.assertTrue(large <= small + small / 10, string.concat(what, ": cost grows with the node count"));
    }
}
