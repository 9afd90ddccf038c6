// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";

/// @notice Fixed (non-fuzz) scenarios whose gas `contracts/.gas-snapshot` records; `make test` runs
/// `forge snapshot --match-contract Gas --check` so a regression shows up in review.
contract GasTest is MembershipBase {
    // Registrations are built in memory inside each test (signing is a cheatcode and cheap), so
    // the figures are dominated by the contract, not by copying fixtures out of storage.

    function test_GasRegisterNode() public {
        submitAs(alice, makeReg(1, nodePk(1)));
    }

    function test_GasRegisterNodeSecondNode() public {
        submitAs(alice, makeReg(1, nodePk(1)));
        submitAs(bob, makeReg(4, nodePk(2)));
    }

    function test_GasRegisterNodeAddPower() public {
        submitAs(alice, makeReg(1, nodePk(1)));
        Reg memory more = makeReg(2, nodePk(1));
        submitAs(alice, more);
    }

    function test_GasDeregisterNode() public {
        submitAs(alice, makeReg(1, nodePk(1)));
        vm.prank(alice);
        nft.deregisterNode(1);
    }

    function test_GasTransferEndingAuthorization() public {
        submitAs(alice, makeReg(1, nodePk(1)));
        vm.prank(alice);
        nft.transferFrom(alice, bob, 1);
    }

    function test_GasMint() public {
        vm.prank(admin);
        nft.mint(bob);
    }

    function test_GasMintBatch10() public {
        vm.prank(admin);
        nft.mintBatch(bob, 10);
    }

    function test_GasValidatorsPage() public {
        submitAs(alice, makeReg(1, nodePk(1)));
        submitAs(bob, makeReg(4, nodePk(2)));
        nft.validators(0, 100);
    }
}
