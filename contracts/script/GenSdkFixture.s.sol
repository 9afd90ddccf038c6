// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Cheats, Vm} from "../test/utils/Cheats.sol";

/// @notice Prints a registration fixture in the shape of test/fixtures/sdk_registration.json, made
/// with fixed keys in dstack's byte formats (v in {0,1}), independently of the Rust SDK (which
/// writes the committed fixture); handy to tell an SDK bug from a contract bug:
///   forge script script/GenSdkFixture.s.sol 2>/dev/null | sed -n 's/^ *FIXTURE //p'
contract GenSdkFixture is Cheats {
    uint256 internal constant KMS_PK = 0x5ad3aec28cc1c30e7af53061b6ed591e16454305a0e088c63d33846f0b1015de;
    uint256 internal constant APP_PK = 0x1111111111111111111111111111111111111111111111111111111111111111;
    uint256 internal constant NODE_PK = 0x2222222222222222222222222222222222222222222222222222222222222222;
    bytes20 internal constant APP_ID = bytes20(hex"e20fcd9b4977e143022fec65cde798af99684afd");
    bytes20 internal constant INSTANCE = bytes20(hex"00112233445566778899aabbccddeeff00112233");
    uint256 internal constant CHAIN_ID = 31337;
    address internal constant CONTRACT = 0x5FbDB2315678afecb367f032d93F642f64180aa3;
    address internal constant OWNER = 0x70997970C51812dc3A010C7d01b50e0d17dc79C8;
    uint256 internal constant TOKEN_ID = 1;
    uint256 internal constant DEADLINE = 4102444800; // 2100-01-01
    string internal constant PURPOSE = "dstack-nft-cluster";
    string internal constant URL = "/ip4/127.0.0.1/tcp/30301";

    struct Parts {
        bytes derived;
        bytes app;
        bytes appSig;
        bytes kmsSig;
        bytes nodeSig;
    }

    function run() external {
        Parts memory p = _build();
        string memory json = string.concat(
            '{"chainId":"',
            vm.toString(CHAIN_ID),
            '","contract":"',
            vm.toString(CONTRACT),
            '","tokenId":"',
            vm.toString(TOKEN_ID),
            '","owner":"',
            vm.toString(OWNER),
            '","kmsRoot":"',
            vm.toString(vm.addr(KMS_PK)),
            '","appId":"',
            vm.toString(abi.encodePacked(APP_ID)),
            '","purpose":"',
            PURPOSE
        );
        json = string.concat(
            json,
            '","instanceId":"',
            vm.toString(abi.encodePacked(INSTANCE)),
            '","connectionUrl":"',
            URL,
            '","deadline":"',
            vm.toString(DEADLINE),
            '","derivedPublicKey":"',
            vm.toString(p.derived),
            '","appPublicKey":"',
            vm.toString(p.app)
        );
        json = string.concat(
            json,
            '","appSignature":"',
            vm.toString(p.appSig),
            '","kmsSignature":"',
            vm.toString(p.kmsSig),
            '","nodeSignature":"',
            vm.toString(p.nodeSig),
            '"}'
        );
        (bool ok,) = address(0x000000000000000000636F6e736F6c652e6c6f67)
            .staticcall(abi.encodeWithSignature("log(string)", string.concat("FIXTURE ", json)));
        ok;
    }

    function _build() internal returns (Parts memory p) {
        Vm.Wallet memory app = vm.createWallet(APP_PK);
        Vm.Wallet memory node = vm.createWallet(NODE_PK);
        p.derived = abi.encodePacked(node.publicKeyX, node.publicKeyY);
        p.app = abi.encodePacked(app.publicKeyX, app.publicKeyY);
        string memory nodeHex = _strip0x(vm.toString(_compressed(node)));
        p.appSig = _dstackSign(APP_PK, keccak256(bytes(string.concat(PURPOSE, ":", nodeHex))));
        p.kmsSig =
            _dstackSign(KMS_PK, keccak256(abi.encodePacked("dstack-kms-issued:", APP_ID, _compressed(app))));
        bytes32 domain = keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
                ),
                keccak256("DstackMembershipNFT"),
                keccak256("1"),
                CHAIN_ID,
                CONTRACT
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "Registration(uint256 tokenId,address owner,bytes20 instanceId,string connectionUrl,uint256 nonce,uint256 deadline)"
                ),
                TOKEN_ID,
                OWNER,
                INSTANCE,
                keccak256(bytes(URL)),
                uint256(0),
                DEADLINE
            )
        );
        p.nodeSig = _dstackSign(NODE_PK, keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
    }

    function _compressed(Vm.Wallet memory w) internal pure returns (bytes memory) {
        return abi.encodePacked(w.publicKeyY % 2 == 0 ? bytes1(0x02) : bytes1(0x03), w.publicKeyX);
    }

    function _dstackSign(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v - 27);
    }

    function _strip0x(string memory s) internal pure returns (string memory) {
        bytes memory b = bytes(s);
        bytes memory out = new bytes(b.length - 2);
        for (uint256 i = 0; i < out.length; ++i) {
            out[i] = b[i + 2];
        }
        return string(out);
    }
}
