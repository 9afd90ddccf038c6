// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";
import {DstackMembershipNFT} from "../src/DstackMembershipNFT.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @notice Owner configuration, minting, withdraw and Ownable2Step.
contract AdminTest is MembershipBase {
    function test_Defaults() public {
        DstackMembershipNFT fresh = new DstackMembershipNFT("N", "S", admin);
        vm.assertEq(fresh.owner(), admin, "owner");
        vm.assertEq(fresh.purpose(), "dstack-nft-cluster", "default purpose");
        vm.assertEq(fresh.kmsRoot(), address(0), "no root");
        vm.assertEq(fresh.maxSupply(), 0, "unlimited");
        vm.assertEq(fresh.mintPrice(), 0, "price");
        vm.assertFalse(fresh.publicMinting(), "public minting off");
        vm.assertEq(fresh.totalMinted(), 0, "nothing minted");
        vm.assertEq(fresh.name(), "N", "name");
        vm.assertEq(fresh.symbol(), "S", "symbol");
    }

    function test_MintIdsStartAtOneAndAreSequential() public {
        vm.assertEq(nft.ownerOf(1), alice, "1");
        vm.assertEq(nft.ownerOf(4), bob, "4");
        vm.assertEq(nft.ownerOf(6), carol, "6");
        vm.startPrank(admin);
        vm.assertEq(nft.mint(bob), 7, "next id");
        vm.assertEq(nft.mintBatch(carol, 3), 8, "batch returns its first id");
        vm.stopPrank();
        vm.assertEq(nft.ownerOf(10), carol, "10");
        vm.assertEq(nft.totalMinted(), 10, "totalMinted");
        vm.assertEq(nft.balanceOf(carol), 4, "carol's balance");
    }

    function test_RevertWhen_MintBatchZero() public {
        vm.prank(admin);
        vm.expectRevert(DstackMembershipNFT.InvalidCount.selector);
        nft.mintBatch(alice, 0);
    }

    function test_MaxSupply() public {
        vm.startPrank(admin);
        vm.expectEmit(false, false, false, true, address(nft));
        emit DstackMembershipNFT.MaxSupplyUpdated(8);
        nft.setMaxSupply(8);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.MaxSupplyReached.selector, 8));
        nft.mintBatch(alice, 3);
        nft.mintBatch(alice, 2);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.MaxSupplyReached.selector, 8));
        nft.mint(alice);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.MaxSupplyBelowMinted.selector, 7, 8));
        nft.setMaxSupply(7);
        nft.setMaxSupply(0); // unlimited again
        nft.mint(alice);
        vm.stopPrank();
        vm.assertEq(nft.totalMinted(), 9, "minted past the old cap");
    }

    function test_PublicMint() public {
        vm.deal(carol, 10 ether);
        vm.prank(carol);
        vm.expectRevert(DstackMembershipNFT.PublicMintingDisabled.selector);
        nft.publicMint{value: 0}();

        vm.startPrank(admin);
        nft.setMintPrice(0.1 ether);
        nft.setPublicMinting(true);
        vm.stopPrank();
        vm.assertEq(nft.mintPrice(), 0.1 ether, "price");

        vm.startPrank(carol);
        vm.expectRevert(
            abi.encodeWithSelector(DstackMembershipNFT.WrongMintPrice.selector, 0.2 ether, 0.1 ether)
        );
        nft.publicMint{value: 0.2 ether}();
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.WrongMintPrice.selector, 0, 0.1 ether));
        nft.publicMint();
        uint256 id = nft.publicMint{value: 0.1 ether}();
        vm.stopPrank();
        vm.assertEq(id, 7, "public mint id");
        vm.assertEq(nft.ownerOf(7), carol, "minted to the caller");
        vm.assertEq(address(nft).balance, 0.1 ether, "proceeds held");

        vm.prank(admin);
        nft.setMaxSupply(7);
        vm.prank(carol);
        vm.expectRevert(abi.encodeWithSelector(DstackMembershipNFT.MaxSupplyReached.selector, 7));
        nft.publicMint{value: 0.1 ether}();
    }

    function test_Withdraw() public {
        vm.startPrank(admin);
        nft.setMintPrice(1 ether);
        nft.setPublicMinting(true);
        vm.stopPrank();
        vm.deal(bob, 3 ether);
        vm.startPrank(bob);
        nft.publicMint{value: 1 ether}();
        nft.publicMint{value: 1 ether}();
        vm.stopPrank();

        address payable treasury = payable(address(0x7EA5));
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        nft.withdraw(treasury);

        vm.expectEmit(true, false, false, true, address(nft));
        emit DstackMembershipNFT.Withdrawn(treasury, 2 ether);
        vm.prank(admin);
        nft.withdraw(treasury);
        vm.assertEq(treasury.balance, 2 ether, "paid out");
        vm.assertEq(address(nft).balance, 0, "emptied");

        vm.prank(admin);
        vm.expectRevert(DstackMembershipNFT.ZeroAddress.selector);
        nft.withdraw(payable(address(0)));

        // a recipient that refuses ether
        vm.prank(bob);
        nft.publicMint{value: 1 ether}();
        vm.prank(admin);
        vm.expectRevert(DstackMembershipNFT.WithdrawFailed.selector);
        nft.withdraw(payable(address(this)));
    }

    function test_Ownable2Step() public {
        vm.prank(admin);
        nft.transferOwnership(bob);
        vm.assertEq(nft.owner(), admin, "still admin until accepted");
        vm.assertEq(nft.pendingOwner(), bob, "pending");

        vm.prank(carol);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, carol));
        nft.acceptOwnership();

        vm.prank(bob);
        nft.acceptOwnership();
        vm.assertEq(nft.owner(), bob, "bob owns");
        vm.assertEq(nft.pendingOwner(), address(0), "no pending");

        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, admin));
        nft.mint(admin);
        vm.prank(bob);
        nft.mint(bob);
    }

    function test_OnlyOwnerOnEveryAdminFunction() public {
        bytes[10] memory calls = [
            abi.encodeCall(DstackMembershipNFT.setKmsRoot, (bob)),
            abi.encodeCall(DstackMembershipNFT.setAppIdAllowed, (APP_ID, false)),
            abi.encodeCall(DstackMembershipNFT.setPurpose, ("x")),
            abi.encodeCall(DstackMembershipNFT.setMaxSupply, (1)),
            abi.encodeCall(DstackMembershipNFT.setMintPrice, (1)),
            abi.encodeCall(DstackMembershipNFT.setPublicMinting, (true)),
            abi.encodeCall(DstackMembershipNFT.withdraw, (payable(bob))),
            abi.encodeCall(DstackMembershipNFT.mint, (bob)),
            abi.encodeCall(DstackMembershipNFT.mintBatch, (bob, 2)),
            abi.encodeCall(Ownable.transferOwnership, (bob))
        ];
        for (uint256 i = 0; i < calls.length; ++i) {
            vm.prank(bob);
            (bool ok, bytes memory ret) = address(nft).call(calls[i]);
            vm.assertFalse(ok, "non-owner call must fail");
            vm.assertEq(
                ret, abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob), "error"
            );
        }
    }

    function test_ConfigEvents() public {
        vm.startPrank(admin);
        vm.expectEmit(true, false, false, true, address(nft));
        emit DstackMembershipNFT.AppIdAllowedUpdated(APP_ID, false);
        nft.setAppIdAllowed(APP_ID, false);
        vm.assertFalse(nft.isAppIdAllowed(APP_ID), "disallowed");

        vm.expectEmit(false, false, false, true, address(nft));
        emit DstackMembershipNFT.PurposeUpdated("cluster-b");
        nft.setPurpose("cluster-b");
        vm.assertEq(nft.purpose(), "cluster-b", "purpose");
        vm.expectRevert(DstackMembershipNFT.EmptyPurpose.selector);
        nft.setPurpose("");

        vm.expectEmit(false, false, false, true, address(nft));
        emit DstackMembershipNFT.MintPriceUpdated(5);
        nft.setMintPrice(5);

        vm.expectEmit(false, false, false, true, address(nft));
        emit DstackMembershipNFT.PublicMintingUpdated(true);
        nft.setPublicMinting(true);

        vm.expectEmit(true, true, false, false, address(nft));
        emit DstackMembershipNFT.KmsRootUpdated(kmsRootAddr, address(0));
        nft.setKmsRoot(address(0));
        vm.stopPrank();
        vm.assertEq(nft.kmsRoot(), address(0), "root cleared");
    }

    function test_SupportsErc721Interfaces() public view {
        vm.assertTrue(nft.supportsInterface(0x80ac58cd), "ERC721");
        vm.assertTrue(nft.supportsInterface(0x5b5e139f), "ERC721Metadata");
        vm.assertTrue(nft.supportsInterface(0x01ffc9a7), "ERC165");
    }
}
