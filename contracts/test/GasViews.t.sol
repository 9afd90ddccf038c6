// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {MembershipBase} from "./utils/MembershipBase.sol";

/// @notice The views' gas at a given number of validators, recorded in `contracts/.gas-snapshot`.
/// The nodes are registered in `setUp` (a transaction of its own), so each figure is one cold call
/// of the view as an eth_call would run it.
abstract contract GasViewsBase is MembershipBase {
    function validatorsRegistered() internal pure virtual returns (uint256);

    function setUp() public override {
        super.setUp();
        registerMany(validatorsRegistered());
    }

    function test_GasViewValidatorCount() public view {
        nft.validatorCount();
    }

    function test_GasViewTotalPower() public view {
        nft.totalPower();
    }

    function test_GasViewValidatorsFirstPage() public view {
        nft.validators(0, 100);
    }

    function test_GasViewValidatorsLastPage() public view {
        nft.validators(validatorsRegistered() - 100, 100);
    }

    function test_GasViewGetPeersLastPage() public view {
        nft.getPeers(validatorsRegistered() - 100, 100);
    }
}

contract GasViews100Test is GasViewsBase {
    function validatorsRegistered() internal pure override returns (uint256) {
        return 100;
    }
}

contract GasViews500Test is GasViewsBase {
    function validatorsRegistered() internal pure override returns (uint256) {
        return 500;
    }
}
