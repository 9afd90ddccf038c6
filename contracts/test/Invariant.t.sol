// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Cheats} from "./utils/Cheats.sol";
import {MembershipBase} from "./utils/MembershipBase.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";

/// @notice Drives the NFT with random valid actions for the invariant fuzzer: mint, register,
/// deregister, transfer, burn, and app id / KMS root / purpose changes. Actions that the contract would refuse
/// are skipped, so every call the fuzzer makes does something.
contract MembershipHandler is MembershipBase {
    uint256 internal constant NODE_KEYS = 5;
    uint256 internal constant MAX_TOKENS = 24;
    address[4] internal owners;
    uint256 internal constant OTHER_ROOT_PK = 0x0A0B0C;

    uint256 public registrations;
    uint256 public endedAuthorizations;

    constructor(DstackMembershipNFT nft_) {
        nft = nft_;
        kmsRootAddr = vm.addr(KMS_PK);
        owners = [alice, bob, carol, address(0xD0D)];
    }

    function nodeAddress(uint256 i) external pure returns (address) {
        return vm.addr(nodePk(i));
    }

    function mint(uint256 ownerSeed) external {
        if (nft.totalMinted() >= MAX_TOKENS) return;
        vm.prank(admin);
        nft.mint(owners[ownerSeed % owners.length]);
    }

    function registerNode(uint256 tokenSeed, uint256 keySeed) external {
        uint256 minted = nft.totalMinted();
        if (minted == 0) return;
        uint256 tokenId = tokenSeed % minted + 1;
        if (!_exists(tokenId) || nft.nodeOf(tokenId) != address(0)) return;
        address tokenOwner = nft.ownerOf(tokenId);
        uint256 pk = nodePk(keySeed % NODE_KEYS);
        DstackMembershipNFT.NodeInfo memory info = nft.nodeInfo(vm.addr(pk));
        if (info.tokens > 0 && info.owner != tokenOwner) return;
        if (nft.kmsRoot() == address(0) || !nft.isAppIdAllowed(APP_ID)) return;
        uint256 rootPk = nft.kmsRoot() == kmsRootAddr ? KMS_PK : OTHER_ROOT_PK;
        submitAs(tokenOwner, makeRegWith(tokenId, pk, chain(rootPk, APP_PK, APP_ID, nft.purpose(), pk), URL));
        ++registrations;
    }

    function deregisterNode(uint256 tokenSeed) external {
        uint256 tokenId = _authorizingToken(tokenSeed);
        if (tokenId == 0) return;
        vm.prank(nft.ownerOf(tokenId));
        nft.deregisterNode(tokenId);
        ++endedAuthorizations;
    }

    function transfer(uint256 tokenSeed, uint256 toSeed) external {
        uint256 minted = nft.totalMinted();
        if (minted == 0) return;
        uint256 tokenId = tokenSeed % minted + 1;
        if (!_exists(tokenId)) return;
        address from = nft.ownerOf(tokenId);
        if (nft.nodeOf(tokenId) != address(0)) ++endedAuthorizations;
        vm.prank(from);
        nft.transferFrom(from, owners[toSeed % owners.length], tokenId);
    }

    function burn(uint256 tokenSeed) external {
        uint256 tokenId = _authorizingToken(tokenSeed);
        if (tokenId == 0) return;
        vm.prank(nft.ownerOf(tokenId));
        nft.burn(tokenId);
        ++endedAuthorizations;
    }

    function toggleAppId() external {
        bool allowed = nft.isAppIdAllowed(APP_ID);
        vm.prank(admin);
        nft.setAppIdAllowed(APP_ID, !allowed);
    }

    function rotateKmsRoot() external {
        address next = nft.kmsRoot() == kmsRootAddr ? vm.addr(OTHER_ROOT_PK) : kmsRootAddr;
        vm.prank(admin);
        nft.setKmsRoot(next);
    }

    function togglePurpose() external {
        bool first = keccak256(bytes(nft.purpose())) == keccak256(bytes(PURPOSE));
        vm.prank(admin);
        nft.setPurpose(first ? "other-purpose" : PURPOSE);
    }

    function _exists(uint256 tokenId) internal view returns (bool) {
        try nft.ownerOf(tokenId) returns (address) {
            return true;
        } catch {
            return false;
        }
    }

    /// @dev Some token that authorizes a node, searched from the seed on; 0 if none does.
    function _authorizingToken(uint256 seed) internal view returns (uint256) {
        uint256 minted = nft.totalMinted();
        if (minted == 0) return 0;
        uint256 start = seed % minted;
        for (uint256 i = 0; i < minted; ++i) {
            uint256 tokenId = (start + i) % minted + 1;
            if (nft.nodeOf(tokenId) != address(0)) return tokenId;
        }
        return 0;
    }
}

/// @notice Invariants of power accounting under the handler's random action sequences.
contract InvariantTest is Cheats {
    DstackMembershipNFT internal nft;
    MembershipHandler internal handler;
    address internal constant ADMIN = address(0xAD);

    function setUp() public {
        nft = new DstackMembershipNFT("Dstack Validators", "DSTV", ADMIN);
        handler = new MembershipHandler(nft);
        vm.startPrank(ADMIN);
        nft.setKmsRoot(vm.addr(0xC0FFEE0000000000000000000000000000000000000000000000000000000001));
        nft.setAppIdAllowed(bytes20(hex"ea549f02e1a25fabd1cb788380e033ec5461b2ff"), true);
        nft.mintBatch(address(0xA11CE), 4);
        nft.mintBatch(address(0xB0B), 4);
        vm.stopPrank();
        vm.warp(1_700_000_000);
    }

    /// @dev The shape forge expects from `targetSelectors()`.
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    /// forge reads the fuzz targets from these two functions: only the handler's actions (not
    /// the helpers it inherits).
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[] memory selectors = new bytes4[](8);
        selectors[0] = MembershipHandler.mint.selector;
        selectors[1] = MembershipHandler.registerNode.selector;
        selectors[2] = MembershipHandler.deregisterNode.selector;
        selectors[3] = MembershipHandler.transfer.selector;
        selectors[4] = MembershipHandler.burn.selector;
        selectors[5] = MembershipHandler.toggleAppId.selector;
        selectors[6] = MembershipHandler.rotateKmsRoot.selector;
        selectors[7] = MembershipHandler.togglePurpose.selector;
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector({addr: address(handler), selectors: selectors});
    }

    /// The sum of the node records' token counts equals the number of authorizing tokens, and the
    /// node count is the number of nodes with at least one token.
    function invariant_NodePowersSumToAuthorizingTokens() public view {
        uint256 authorizing;
        uint256 minted = nft.totalMinted();
        for (uint256 t = 1; t <= minted; ++t) {
            if (nft.nodeOf(t) != address(0)) ++authorizing;
        }
        uint256 sum;
        uint256 withTokens;
        for (uint256 i = 0; i < 5; ++i) {
            DstackMembershipNFT.NodeInfo memory info = nft.nodeInfo(handler.nodeAddress(i));
            sum += info.tokens;
            if (info.tokens > 0) ++withTokens;
        }
        vm.assertEq(sum, authorizing, "sum of node token counts == authorizing tokens");
        vm.assertEq(nft.nodeCount(), withTokens, "node count == nodes with tokens");
        vm.assertEq(
            handler.registrations() - handler.endedAuthorizations(), authorizing, "registrations - ended"
        );
    }

    /// The views agree with each other: totalPower is the sum of counted powers, validatorCount the
    /// number of counted nodes, and every token's node and owner are consistent.
    function invariant_ViewsAgree() public view {
        DstackMembershipNFT.ValidatorInfo[] memory vs = nft.validators(0, 100);
        uint256 sum;
        for (uint256 i = 0; i < vs.length; ++i) {
            vm.assertTrue(vs[i].power > 0, "listed validators have power");
            vm.assertEq(vs[i].power, nft.powerOf(vs[i].node), "powerOf == listed power");
            sum += vs[i].power;
        }
        vm.assertEq(nft.totalPower(), sum, "totalPower == sum of validator powers");
        vm.assertEq(nft.validatorCount(), vs.length, "validatorCount == listed validators");
        vm.assertEq(nft.getPeers(0, 100).length, vs.length, "peers == validators");
        // the running group counts agree with each node's own counted flag
        uint256 countedNodes;
        uint256 countedPower;
        for (uint256 i = 0; i < 5; ++i) {
            DstackMembershipNFT.NodeInfo memory info = nft.nodeInfo(handler.nodeAddress(i));
            if (info.counted) {
                ++countedNodes;
                countedPower += info.tokens;
            }
            vm.assertEq(nft.powerOf(info.node), info.counted ? info.tokens : 0, "powerOf == counted tokens");
        }
        vm.assertEq(nft.validatorCount(), countedNodes, "validatorCount == nodes counted one by one");
        vm.assertEq(nft.totalPower(), countedPower, "totalPower == their tokens");
        uint256 minted = nft.totalMinted();
        for (uint256 t = 1; t <= minted; ++t) {
            address n = nft.nodeOf(t);
            if (n != address(0)) {
                vm.assertEq(nft.nodeInfo(n).owner, nft.ownerOf(t), "node owner == token owner");
            }
        }
    }
}
