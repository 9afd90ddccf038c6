// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title DstackMembershipNFT
/// @notice One ERC721 token authorizes one validator slot of a dstack-nft-cluster. A node joins by
/// proving that its key was derived inside a dstack TEE: the KMS root signed the app key, the app
/// key signed the node's derived key for the cluster's purpose, and the derived key itself signed
/// an EIP-712 `Registration` naming the token, its owner, a nonce and a deadline. A node's voting
/// power is the number of tokens authorizing it; a transfer or burn ends a token's authorization.
/// @dev Byte formats follow dstack (DESIGN section 2): public keys are given uncompressed (64 bytes,
/// no 0x04 prefix), signatures are 65 bytes `r || s || v` with v in {0,1} or {27,28} and low s.
contract DstackMembershipNFT is ERC721, Ownable2Step, EIP712 {
    // ------------------------------------------------------------------ types

    /// @notice The dstack signature chain of a derived node key.
    struct DstackProof {
        /// Derived (node) public key, 64 bytes uncompressed without prefix.
        bytes derivedPublicKey;
        /// App public key, 64 bytes uncompressed without prefix.
        bytes appPublicKey;
        /// App key's signature over keccak256(purpose ":" hex(derived_pub33)), 65 bytes.
        bytes appSignature;
        /// KMS root's signature over keccak256("dstack-kms-issued:" appId app_pub33), 65 bytes.
        bytes kmsSignature;
        /// The dstack app id the keys belong to.
        bytes20 appId;
    }

    /// @notice One counted validator as the consensus layer needs it.
    struct ValidatorInfo {
        address node;
        bytes publicKey;
        uint256 power;
        string connectionUrl;
        bytes20 instanceId;
    }

    /// @notice One counted node as the network layer needs it.
    struct Peer {
        address node;
        string connectionUrl;
    }

    /// @notice Everything stored about a node, counted or not (for operators and debugging).
    struct NodeInfo {
        address node;
        address owner;
        bytes publicKey;
        /// Number of tokens authorizing the node, whether or not it is counted.
        uint256 tokens;
        /// Whether the node counts in the views (its app id is allowed and its KMS root is current).
        bool counted;
        bytes20 appId;
        address kmsRoot;
        bytes20 instanceId;
        string connectionUrl;
    }

    /// @notice Why a token stopped authorizing a node.
    enum EndReason {
        Deregistered,
        Transferred,
        Burned
    }

    /// @dev Storage of one node; the first slot packs owner, token count and list position.
    struct Node {
        address owner;
        uint64 tokens;
        uint32 index; // position in _nodeList plus one; 0 = not in the list
        bytes20 appId;
        address kmsRoot;
        bytes20 instanceId;
        bytes publicKey;
        string connectionUrl;
    }

    // ------------------------------------------------------------------ constants

    /// @notice EIP-712 type of the registration the node key signs.
    bytes32 public constant REGISTRATION_TYPEHASH = keccak256(
        "Registration(uint256 tokenId,address owner,bytes20 instanceId,string connectionUrl,uint256 nonce,uint256 deadline)"
    );
    /// @notice Longest connection URL accepted, in bytes, so no owner can make the views heavy.
    uint256 public constant MAX_URL_LENGTH = 256;
    /// @notice Largest page of `validators` and `getPeers`.
    uint256 public constant MAX_PAGE_LIMIT = 100;
    /// @notice Purpose set at deployment.
    string public constant DEFAULT_PURPOSE = "dstack-nft-cluster";
    /// @dev secp256k1n / 2: larger s values are the malleable twin of a valid signature.
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes16 private constant HEX_DIGITS = "0123456789abcdef";

    // ------------------------------------------------------------------ storage

    address private _kmsRoot;
    mapping(bytes20 => bool) private _appIdAllowed;
    string private _purpose;
    uint256 private _maxSupply;
    uint256 private _mintPrice;
    bool private _publicMinting;
    uint256 private _totalMinted;

    mapping(address => Node) private _nodes;
    mapping(uint256 => address) private _tokenNode;
    mapping(address => uint256) private _nonces;
    address[] private _nodeList;

    // ------------------------------------------------------------------ events

    event KmsRootUpdated(address indexed previousRoot, address indexed newRoot);
    event AppIdAllowedUpdated(bytes20 indexed appId, bool allowed);
    event PurposeUpdated(string purpose);
    event MaxSupplyUpdated(uint256 maxSupply);
    event MintPriceUpdated(uint256 mintPrice);
    event PublicMintingUpdated(bool enabled);
    event Withdrawn(address indexed to, uint256 amount);
    /// @notice A token now authorizes `node`; `power` is the node's token count afterwards.
    event NodeRegistered(
        uint256 indexed tokenId,
        address indexed node,
        address indexed owner,
        bytes20 appId,
        bytes20 instanceId,
        string connectionUrl,
        bytes publicKey,
        uint256 power
    );
    /// @notice `tokenId` no longer authorizes `node`.
    event NodeAuthorizationEnded(uint256 indexed tokenId, address indexed node, EndReason reason);
    /// @notice The last token authorizing `node` is gone; its record was deleted.
    event NodeRemoved(address indexed node, address indexed owner);
    event ConnectionUrlUpdated(address indexed node, address indexed owner, string connectionUrl);

    // ------------------------------------------------------------------ errors

    error InvalidPublicKeyLength(uint256 length);
    error InvalidSignatureLength(uint256 length);
    error SignatureHighS();
    error InvalidSignatureV(uint8 v);
    /// @notice The app signature was not made by the given app key over this cluster's app message
    /// (a forged chain, or one made for another purpose: the two cannot be told apart on chain).
    error AppSignatureMismatch(address recovered, address appKeyAddress);
    error KmsRootNotSet();
    error KmsSignatureMismatch(address recovered, address kmsRoot);
    error AppIdNotAllowed(bytes20 appId);
    error NodeSignatureMismatch(address recovered, address node);
    error RegistrationExpired(uint256 deadline, uint256 timestamp);
    error UrlTooLong(uint256 length, uint256 maxLength);
    error LimitTooLarge(uint256 limit, uint256 maxLimit);
    error NotTokenOwnerOrApproved(address caller);
    error TokenAlreadyAuthorizesNode(uint256 tokenId, address node);
    error TokenAuthorizesNoNode(uint256 tokenId);
    error NodeOwnedByAnotherOwner(address node, address nodeOwner);
    error NodeNotRegistered(address node);
    error MaxSupplyReached(uint256 maxSupply);
    error MaxSupplyBelowMinted(uint256 maxSupply, uint256 totalMinted);
    error PublicMintingDisabled();
    error WrongMintPrice(uint256 sent, uint256 price);
    error InvalidCount();
    error ZeroAddress();
    error EmptyPurpose();
    error WithdrawFailed();

    // ------------------------------------------------------------------ construction

    constructor(string memory name_, string memory symbol_, address initialOwner)
        ERC721(name_, symbol_)
        Ownable(initialOwner)
        EIP712("DstackMembershipNFT", "1")
    {
        _purpose = DEFAULT_PURPOSE;
        emit PurposeUpdated(DEFAULT_PURPOSE);
    }

    // ------------------------------------------------------------------ owner configuration

    /// @notice Pins the dstack KMS root whose signature every app key needs; zero stops registration
    /// and makes every node uncounted.
    function setKmsRoot(address newRoot) external onlyOwner {
        emit KmsRootUpdated(_kmsRoot, newRoot);
        _kmsRoot = newRoot;
    }

    /// @notice Allows or disallows a dstack app id; nodes of a disallowed app stop counting.
    function setAppIdAllowed(bytes20 appId, bool allowed) external onlyOwner {
        _appIdAllowed[appId] = allowed;
        emit AppIdAllowedUpdated(appId, allowed);
    }

    /// @notice Sets the purpose string the app key must have signed (dstack `GetKey` purpose).
    function setPurpose(string calldata newPurpose) external onlyOwner {
        if (bytes(newPurpose).length == 0) revert EmptyPurpose();
        _purpose = newPurpose;
        emit PurposeUpdated(newPurpose);
    }

    /// @notice Caps the number of tokens ever minted; 0 means unlimited.
    function setMaxSupply(uint256 newMaxSupply) external onlyOwner {
        if (newMaxSupply != 0 && newMaxSupply < _totalMinted) {
            revert MaxSupplyBelowMinted(newMaxSupply, _totalMinted);
        }
        _maxSupply = newMaxSupply;
        emit MaxSupplyUpdated(newMaxSupply);
    }

    /// @notice Sets the exact price of `publicMint`, in wei.
    function setMintPrice(uint256 newPrice) external onlyOwner {
        _mintPrice = newPrice;
        emit MintPriceUpdated(newPrice);
    }

    /// @notice Opens or closes `publicMint`.
    function setPublicMinting(bool enabled) external onlyOwner {
        _publicMinting = enabled;
        emit PublicMintingUpdated(enabled);
    }

    /// @notice Sends the whole balance (mint proceeds) to `to`.
    function withdraw(address payable to) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        uint256 amount = address(this).balance;
        emit Withdrawn(to, amount);
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert WithdrawFailed();
    }

    function kmsRoot() external view returns (address) {
        return _kmsRoot;
    }

    function isAppIdAllowed(bytes20 appId) external view returns (bool) {
        return _appIdAllowed[appId];
    }

    function purpose() external view returns (string memory) {
        return _purpose;
    }

    function maxSupply() external view returns (uint256) {
        return _maxSupply;
    }

    function mintPrice() external view returns (uint256) {
        return _mintPrice;
    }

    function publicMinting() external view returns (bool) {
        return _publicMinting;
    }

    // ------------------------------------------------------------------ minting

    /// @notice Owner mint of one token; ids start at 1 and are sequential.
    function mint(address to) external onlyOwner returns (uint256 tokenId) {
        return _mintMany(to, 1);
    }

    /// @notice Owner mint of `count` consecutive tokens; returns the first id.
    function mintBatch(address to, uint256 count) external onlyOwner returns (uint256 firstTokenId) {
        if (count == 0) revert InvalidCount();
        return _mintMany(to, count);
    }

    /// @notice Anyone mints one token for exactly `mintPrice()` while public minting is on.
    function publicMint() external payable returns (uint256 tokenId) {
        if (!_publicMinting) revert PublicMintingDisabled();
        if (msg.value != _mintPrice) revert WrongMintPrice(msg.value, _mintPrice);
        return _mintMany(msg.sender, 1);
    }

    /// @notice Burns a token (its owner or an approved account); ends its authorization.
    function burn(uint256 tokenId) external {
        _update(address(0), tokenId, msg.sender);
    }

    /// @notice Number of tokens ever minted (burned ones included); the last id minted.
    function totalMinted() external view returns (uint256) {
        return _totalMinted;
    }

    function _mintMany(address to, uint256 count) private returns (uint256 firstTokenId) {
        uint256 minted = _totalMinted;
        uint256 cap = _maxSupply;
        if (cap != 0 && minted + count > cap) revert MaxSupplyReached(cap);
        _totalMinted = minted + count;
        firstTokenId = minted + 1;
        for (uint256 i = 0; i < count; ++i) {
            _mint(to, firstTokenId + i);
        }
    }

    // ------------------------------------------------------------------ registration

    /// @notice Makes `tokenId` authorize the node whose dstack-derived key is proven by `proof`.
    /// @dev Called by the token's owner or an approved account. `nodeSignature` is the derived key's
    /// EIP-712 signature over `registrationDigest(tokenId, ownerOf(tokenId), instanceId,
    /// connectionUrl, nonces(node), deadline)`. Registering a node that already exists (same owner)
    /// with another token adds one to its power and refreshes its URL, instance id and verification.
    function registerNode(
        uint256 tokenId,
        DstackProof calldata proof,
        bytes20 instanceId,
        string calldata connectionUrl,
        uint256 deadline,
        bytes calldata nodeSignature
    ) external {
        if (bytes(connectionUrl).length > MAX_URL_LENGTH) {
            revert UrlTooLong(bytes(connectionUrl).length, MAX_URL_LENGTH);
        }
        // A deadline in seconds tolerates the few seconds a block producer can shift time.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > deadline) revert RegistrationExpired(deadline, block.timestamp);
        address tokenOwner = _requireOwned(tokenId);
        if (!_isAuthorized(tokenOwner, msg.sender, tokenId)) revert NotTokenOwnerOrApproved(msg.sender);
        {
            address current = _tokenNode[tokenId];
            if (current != address(0)) revert TokenAlreadyAuthorizesNode(tokenId, current);
        }

        address node = _verifyProof(proof);
        {
            bytes32 digest = _registrationDigest(
                tokenId, tokenOwner, instanceId, keccak256(bytes(connectionUrl)), _nonces[node], deadline
            );
            address signer = _recover(digest, nodeSignature);
            if (signer != node) revert NodeSignatureMismatch(signer, node);
        }
        unchecked {
            ++_nonces[node];
        }
        _authorize(tokenId, tokenOwner, node, proof, instanceId, connectionUrl);
    }

    /// @dev Records that `tokenId` authorizes `node` (creating the node record if needed).
    function _authorize(
        uint256 tokenId,
        address tokenOwner,
        address node,
        DstackProof calldata proof,
        bytes20 instanceId,
        string calldata connectionUrl
    ) private {
        Node storage n = _nodes[node];
        if (n.index == 0) {
            _nodeList.push(node);
            n.index = uint32(_nodeList.length);
            n.owner = tokenOwner;
            n.publicKey = proof.derivedPublicKey;
        } else if (n.owner != tokenOwner) {
            revert NodeOwnedByAnotherOwner(node, n.owner);
        }
        uint64 power = n.tokens + 1;
        n.tokens = power;
        n.appId = proof.appId;
        n.kmsRoot = _kmsRoot;
        n.instanceId = instanceId;
        n.connectionUrl = connectionUrl;
        _tokenNode[tokenId] = node;
        emit NodeRegistered(
            tokenId, node, tokenOwner, proof.appId, instanceId, connectionUrl, proof.derivedPublicKey, power
        );
    }

    /// @notice Ends the authorization `tokenId` gives (token owner or approved account).
    function deregisterNode(uint256 tokenId) external {
        address tokenOwner = _requireOwned(tokenId);
        if (!_isAuthorized(tokenOwner, msg.sender, tokenId)) revert NotTokenOwnerOrApproved(msg.sender);
        if (_tokenNode[tokenId] == address(0)) revert TokenAuthorizesNoNode(tokenId);
        _endAuthorization(tokenId, EndReason.Deregistered);
    }

    /// @notice Changes the URL peers use to reach `node` (by the owner of its tokens or an operator
    /// approved for all of that owner's tokens).
    function updateConnectionUrl(address node, string calldata connectionUrl) external {
        Node storage n = _nodes[node];
        address nodeOwner = n.owner;
        if (n.index == 0) revert NodeNotRegistered(node);
        if (msg.sender != nodeOwner && !isApprovedForAll(nodeOwner, msg.sender)) {
            revert NotTokenOwnerOrApproved(msg.sender);
        }
        if (bytes(connectionUrl).length > MAX_URL_LENGTH) {
            revert UrlTooLong(bytes(connectionUrl).length, MAX_URL_LENGTH);
        }
        n.connectionUrl = connectionUrl;
        emit ConnectionUrlUpdated(node, nodeOwner, connectionUrl);
    }

    /// @notice Next registration nonce of a node key (incremented by every registration of it).
    function nonces(address node) external view returns (uint256) {
        return _nonces[node];
    }

    /// @notice The EIP-712 digest the node key signs to register.
    function registrationDigest(
        uint256 tokenId,
        address owner,
        bytes20 instanceId,
        string calldata connectionUrl,
        uint256 nonce,
        uint256 deadline
    ) external view returns (bytes32) {
        return _registrationDigest(
            tokenId, owner, instanceId, keccak256(bytes(connectionUrl)), nonce, deadline
        );
    }

    /// @notice The raw message the app key signs for a derived key under the current purpose:
    /// keccak256(purpose ":" lowercase-hex(derived_pub33)). For diagnosing `AppSignatureMismatch`.
    function appMessage(bytes calldata derivedPublicKey) external view returns (bytes32) {
        _checkKeyLength(derivedPublicKey);
        return _appMessage(derivedPublicKey);
    }

    /// @notice The raw message the KMS root signs for an app key:
    /// keccak256("dstack-kms-issued:" appId app_pub33).
    function kmsMessage(bytes20 appId, bytes calldata appPublicKey) external pure returns (bytes32) {
        _checkKeyLength(appPublicKey);
        return _kmsMessage(appId, appPublicKey);
    }

    // ------------------------------------------------------------------ views

    /// @notice Counted validators in list order, skipping `offset` of them, at most `limit`.
    function validators(uint256 offset, uint256 limit) external view returns (ValidatorInfo[] memory page) {
        if (limit > MAX_PAGE_LIMIT) revert LimitTooLarge(limit, MAX_PAGE_LIMIT);
        page = new ValidatorInfo[](limit);
        uint256 found;
        uint256 skipped;
        uint256 len = _nodeList.length;
        address root = _kmsRoot;
        for (uint256 i = 0; i < len && found < limit; ++i) {
            address node = _nodeList[i];
            Node storage n = _nodes[node];
            if (!_counted(n, root)) continue;
            if (skipped < offset) {
                ++skipped;
                continue;
            }
            page[found++] = ValidatorInfo({
                node: node,
                publicKey: n.publicKey,
                power: n.tokens,
                connectionUrl: n.connectionUrl,
                instanceId: n.instanceId
            });
        }
        assembly ("memory-safe") {
            mstore(page, found)
        }
    }

    /// @notice Counted nodes and their URLs in list order, skipping `offset`, at most `limit`.
    function getPeers(uint256 offset, uint256 limit) external view returns (Peer[] memory page) {
        if (limit > MAX_PAGE_LIMIT) revert LimitTooLarge(limit, MAX_PAGE_LIMIT);
        page = new Peer[](limit);
        uint256 found;
        uint256 skipped;
        uint256 len = _nodeList.length;
        address root = _kmsRoot;
        for (uint256 i = 0; i < len && found < limit; ++i) {
            address node = _nodeList[i];
            Node storage n = _nodes[node];
            if (!_counted(n, root)) continue;
            if (skipped < offset) {
                ++skipped;
                continue;
            }
            page[found++] = Peer({node: node, connectionUrl: n.connectionUrl});
        }
        assembly ("memory-safe") {
            mstore(page, found)
        }
    }

    /// @notice Number of counted validators.
    function validatorCount() external view returns (uint256 count) {
        uint256 len = _nodeList.length;
        address root = _kmsRoot;
        for (uint256 i = 0; i < len; ++i) {
            if (_counted(_nodes[_nodeList[i]], root)) ++count;
        }
    }

    /// @notice Sum of the power of the counted validators.
    function totalPower() external view returns (uint256 total) {
        uint256 len = _nodeList.length;
        address root = _kmsRoot;
        for (uint256 i = 0; i < len; ++i) {
            Node storage n = _nodes[_nodeList[i]];
            if (_counted(n, root)) total += n.tokens;
        }
    }

    /// @notice The node `tokenId` authorizes, or zero.
    function nodeOf(uint256 tokenId) external view returns (address) {
        return _tokenNode[tokenId];
    }

    /// @notice Voting power of `node`: its token count if it is counted, else 0.
    function powerOf(address node) external view returns (uint256) {
        Node storage n = _nodes[node];
        return _counted(n, _kmsRoot) ? n.tokens : 0;
    }

    /// @notice Number of nodes with at least one authorizing token, counted or not.
    function nodeCount() external view returns (uint256) {
        return _nodeList.length;
    }

    /// @notice Everything stored about `node` (zero record if it has no authorizing token).
    function nodeInfo(address node) external view returns (NodeInfo memory info) {
        Node storage n = _nodes[node];
        info = NodeInfo({
            node: node,
            owner: n.owner,
            publicKey: n.publicKey,
            tokens: n.tokens,
            counted: _counted(n, _kmsRoot),
            appId: n.appId,
            kmsRoot: n.kmsRoot,
            instanceId: n.instanceId,
            connectionUrl: n.connectionUrl
        });
    }

    // ------------------------------------------------------------------ internals

    /// @dev Every ownership change except a mint (transfer, burn) ends the token's authorization.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address from) {
        from = super._update(to, tokenId, auth);
        if (from != address(0) && _tokenNode[tokenId] != address(0)) {
            _endAuthorization(tokenId, to == address(0) ? EndReason.Burned : EndReason.Transferred);
        }
    }

    function _endAuthorization(uint256 tokenId, EndReason reason) private {
        address node = _tokenNode[tokenId];
        delete _tokenNode[tokenId];
        Node storage n = _nodes[node];
        uint64 remaining = n.tokens - 1;
        emit NodeAuthorizationEnded(tokenId, node, reason);
        if (remaining > 0) {
            n.tokens = remaining;
            return;
        }
        // Swap-and-pop the node out of the list, then drop its record (nonces stay).
        uint256 idx = n.index - 1;
        uint256 last = _nodeList.length - 1;
        if (idx != last) {
            address moved = _nodeList[last];
            _nodeList[idx] = moved;
            // casting to uint32 is safe: idx + 1 <= the list length, stored as uint32 on push.
            // forge-lint: disable-next-line(unsafe-typecast)
            _nodes[moved].index = uint32(idx + 1);
        }
        _nodeList.pop();
        emit NodeRemoved(node, n.owner);
        delete _nodes[node];
    }

    function _counted(Node storage n, address root) private view returns (bool) {
        // A stored kmsRoot is never zero, so an unset root counts nobody.
        return n.tokens != 0 && n.kmsRoot == root && _appIdAllowed[n.appId];
    }

    /// @dev Checks 1 and 2 of DESIGN section 3; returns the node (derived key) address.
    function _verifyProof(DstackProof calldata proof) private view returns (address node) {
        address root = _kmsRoot;
        if (root == address(0)) revert KmsRootNotSet();
        if (!_appIdAllowed[proof.appId]) revert AppIdNotAllowed(proof.appId);
        _checkKeyLength(proof.derivedPublicKey);
        _checkKeyLength(proof.appPublicKey);

        address appKey = _keyAddress(proof.appPublicKey);
        address recovered = _recover(_appMessage(proof.derivedPublicKey), proof.appSignature);
        if (recovered != appKey) revert AppSignatureMismatch(recovered, appKey);

        recovered = _recover(_kmsMessage(proof.appId, proof.appPublicKey), proof.kmsSignature);
        if (recovered != root) revert KmsSignatureMismatch(recovered, root);

        node = _keyAddress(proof.derivedPublicKey);
    }

    function _registrationDigest(
        uint256 tokenId,
        address owner,
        bytes20 instanceId,
        bytes32 urlHash,
        uint256 nonce,
        uint256 deadline
    ) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(REGISTRATION_TYPEHASH, tokenId, owner, instanceId, urlHash, nonce, deadline))
        );
    }

    function _appMessage(bytes calldata derivedPublicKey) private view returns (bytes32) {
        bytes memory compressed = _compress(derivedPublicKey);
        bytes memory hexed = new bytes(66);
        for (uint256 i = 0; i < 33; ++i) {
            uint8 b = uint8(compressed[i]);
            hexed[2 * i] = HEX_DIGITS[b >> 4];
            hexed[2 * i + 1] = HEX_DIGITS[b & 0x0f];
        }
        return keccak256(abi.encodePacked(_purpose, ":", hexed));
    }

    function _kmsMessage(bytes20 appId, bytes calldata appPublicKey) private pure returns (bytes32) {
        return keccak256(abi.encodePacked("dstack-kms-issued:", appId, _compress(appPublicKey)));
    }

    /// @dev 64-byte uncompressed key -> 33-byte compressed key (0x02/0x03 by the parity of y).
    function _compress(bytes calldata key) private pure returns (bytes memory) {
        bytes32 x = bytes32(key[0:32]);
        uint256 y = uint256(bytes32(key[32:64]));
        return abi.encodePacked(bytes1(y & 1 == 0 ? 0x02 : 0x03), x);
    }

    function _keyAddress(bytes calldata key) private pure returns (address) {
        return address(uint160(uint256(keccak256(key))));
    }

    function _checkKeyLength(bytes calldata key) private pure {
        if (key.length != 64) revert InvalidPublicKeyLength(key.length);
    }

    /// @dev ecrecover of a 65-byte `r || s || v` signature: low s only, v in {0,1,27,28}.
    /// Returns zero for a signature no key made, which never equals an expected signer.
    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) revert InvalidSignatureLength(sig.length);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (uint256(s) > HALF_ORDER) revert SignatureHighS();
        if (v < 27) v += 27;
        if (v != 27 && v != 28) revert InvalidSignatureV(uint8(sig[64]));
        return ecrecover(digest, v, r, s);
    }
}
