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
/// A node counts in the views only while the configuration it was verified under is current: its
/// app id is allowed, and the KMS root and purpose it was verified under are the current ones.
/// @dev Views are O(1) in the number of nodes. Nodes are kept in groups, one per verification
/// configuration (app id, KMS root, purpose), each group holding its node list and its summed
/// power, maintained on every registration and end of authorization. An owner configuration change
/// (disallowing an app id, rotating the KMS root or the purpose) changes which groups are current
/// without touching any node, so no transaction ever loops over nodes. The current groups are those
/// of the allowed app ids under the current root and purpose; the allowed app ids are bounded
/// (`MAX_ALLOWED_APP_IDS`), so `validatorCount` and `totalPower` read at most that many groups and a
/// page of `validators` or `getPeers` costs O(MAX_ALLOWED_APP_IDS + limit), whatever the offset.
/// Byte formats follow dstack (DESIGN section 2): public keys are given uncompressed (64 bytes,
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
        /// Whether the node counts in the views (its app id is allowed, and the KMS root and the
        /// purpose it was verified under are the current ones).
        bool counted;
        bytes20 appId;
        address kmsRoot;
        /// keccak256 of the purpose the node was last verified under.
        bytes32 purposeHash;
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
    /// (appId, kmsRoot, purposeId) is the configuration it was verified under: its group.
    struct Node {
        address owner;
        uint64 tokens;
        uint32 index; // position in its group's node list plus one; 0 = no record
        bytes20 appId;
        address kmsRoot;
        uint96 purposeId; // packed with kmsRoot; see _purposeIds
        bytes20 instanceId;
        bytes publicKey;
        string connectionUrl;
    }

    /// @dev The nodes verified under one configuration (positions 0 .. size - 1) and the sum of
    /// their token counts; size and power share a slot.
    struct Group {
        uint128 size;
        uint128 power;
        mapping(uint256 => address) nodes;
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
    /// @notice Farthest a registration's deadline may lie ahead of the block, in seconds, so a
    /// signed registration cannot stay usable for ever (the SDK signs for one hour).
    uint256 public constant MAX_DEADLINE_WINDOW = 1 days;
    /// @notice Most app ids allowed at once: the views read one group per allowed app id.
    uint256 public constant MAX_ALLOWED_APP_IDS = 32;
    /// @notice Purpose set at deployment.
    string public constant DEFAULT_PURPOSE = "dstack-nft-cluster";
    /// @dev secp256k1n / 2: larger s values are the malleable twin of a valid signature.
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes16 private constant HEX_DIGITS = "0123456789abcdef";

    // ------------------------------------------------------------------ storage

    address private _kmsRoot;
    /// @dev Id of the current purpose (packed with the root: registrations and views read both).
    uint96 private _purposeId;
    /// @dev The allowed app ids, and each one's position in that list plus one (0 = not allowed).
    bytes20[] private _allowedAppIds;
    mapping(bytes20 => uint256) private _allowedAppIdIndex;
    string private _purpose;
    /// @dev Each distinct purpose ever set gets an id from 1 on (its hash at `_purposeHashes[id - 1]`),
    /// so a node stores the purpose it was verified under in the spare bytes of its KMS root's slot,
    /// and setting an earlier purpose again gives it back its id (its nodes count again).
    mapping(bytes32 => uint96) private _purposeIds;
    bytes32[] private _purposeHashes;
    uint256 private _maxSupply;
    uint256 private _mintPrice;
    bool private _publicMinting;
    uint256 private _totalMinted;

    mapping(address => Node) private _nodes;
    mapping(uint256 => address) private _tokenNode;
    mapping(address => uint256) private _nonces;
    /// @dev Keyed by `_groupKeyOf(appId, kmsRoot, purposeId)`.
    mapping(bytes32 => Group) private _groups;
    uint256 private _nodeCount;

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
    /// @notice The deadline lies more than `MAX_DEADLINE_WINDOW` after the block's timestamp.
    error DeadlineTooFar(uint256 deadline, uint256 maxDeadline);
    error UrlTooLong(uint256 length, uint256 maxLength);
    /// @notice The connection URL is not of the multiaddr shape nodes dial; `position` is the byte
    /// offset where it stops matching (see `registerNode`).
    error InvalidConnectionUrl(uint256 position);
    error TooManyAllowedAppIds(uint256 maxAllowed);
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
        _setPurpose(DEFAULT_PURPOSE);
    }

    // ------------------------------------------------------------------ owner configuration

    /// @notice Pins the dstack KMS root whose signature every app key needs; zero stops registration
    /// and makes every node uncounted.
    function setKmsRoot(address newRoot) external onlyOwner {
        emit KmsRootUpdated(_kmsRoot, newRoot);
        _kmsRoot = newRoot;
    }

    /// @notice Allows or disallows a dstack app id; nodes of a disallowed app stop counting (and
    /// count again if it is allowed again). At most `MAX_ALLOWED_APP_IDS` are allowed at once.
    function setAppIdAllowed(bytes20 appId, bool allowed) external onlyOwner {
        uint256 index = _allowedAppIdIndex[appId];
        if (allowed && index == 0) {
            if (_allowedAppIds.length == MAX_ALLOWED_APP_IDS) {
                revert TooManyAllowedAppIds(MAX_ALLOWED_APP_IDS);
            }
            _allowedAppIds.push(appId);
            _allowedAppIdIndex[appId] = _allowedAppIds.length;
        } else if (!allowed && index != 0) {
            bytes20 last = _allowedAppIds[_allowedAppIds.length - 1];
            _allowedAppIds[index - 1] = last;
            _allowedAppIdIndex[last] = index;
            _allowedAppIds.pop();
            delete _allowedAppIdIndex[appId];
        }
        emit AppIdAllowedUpdated(appId, allowed);
    }

    /// @notice Sets the purpose string the app key must have signed (dstack `GetKey` purpose).
    /// Nodes verified under another purpose stop counting until re-registered under this one (and
    /// count again if their purpose is set back), as for a KMS root rotation.
    function setPurpose(string calldata newPurpose) external onlyOwner {
        if (bytes(newPurpose).length == 0) revert EmptyPurpose();
        _setPurpose(newPurpose);
    }

    function _setPurpose(string memory newPurpose) private {
        bytes32 hash = keccak256(bytes(newPurpose));
        uint96 id = _purposeIds[hash];
        if (id == 0) {
            _purposeHashes.push(hash);
            // casting to uint96 is safe: 2^96 owner transactions cannot be paid for.
            // forge-lint: disable-next-line(unsafe-typecast)
            id = uint96(_purposeHashes.length);
            _purposeIds[hash] = id;
        }
        _purpose = newPurpose;
        _purposeId = id;
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
        return _allowedAppIdIndex[appId] != 0;
    }

    /// @notice The allowed app ids (at most `MAX_ALLOWED_APP_IDS`), in the order the views list
    /// their nodes.
    function allowedAppIds() external view returns (bytes20[] memory) {
        return _allowedAppIds;
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
    /// connectionUrl, nonces(node), deadline)`; `deadline` must lie within `MAX_DEADLINE_WINDOW` of
    /// the block. Registering a node that already exists (same owner) with another token adds one
    /// to its power and refreshes its URL, instance id and verification (app id, KMS root, purpose).
    /// `connectionUrl` is a libp2p multiaddr as nodes dial it: printable ASCII without spaces, at
    /// most `MAX_URL_LENGTH` bytes, no empty segment, starting
    /// `/<ip4|ip6|dns|dns4|dns6>/<host>/<tcp|udp>/<port 1-65535>`, optionally followed by more
    /// segments (`/p2p/<id>`, `/quic-v1`, ...).
    function registerNode(
        uint256 tokenId,
        DstackProof calldata proof,
        bytes20 instanceId,
        string calldata connectionUrl,
        uint256 deadline,
        bytes calldata nodeSignature
    ) external {
        _checkConnectionUrl(connectionUrl);
        // A deadline in seconds tolerates the few seconds a block producer can shift time.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > deadline) revert RegistrationExpired(deadline, block.timestamp);
        // forge-lint: disable-next-line(block-timestamp)
        if (deadline - block.timestamp > MAX_DEADLINE_WINDOW) {
            revert DeadlineTooFar(deadline, block.timestamp + MAX_DEADLINE_WINDOW);
        }
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

    /// @dev Records that `tokenId` authorizes `node` (creating the node record if needed), moving
    /// the node to the group of the configuration it has just been verified under.
    function _authorize(
        uint256 tokenId,
        address tokenOwner,
        address node,
        DstackProof calldata proof,
        bytes20 instanceId,
        string calldata connectionUrl
    ) private {
        Node storage n = _nodes[node];
        (address root, uint96 purposeId) = (_kmsRoot, _purposeId);
        if (n.index == 0) {
            n.owner = tokenOwner;
            n.publicKey = proof.derivedPublicKey;
            ++_nodeCount;
        } else if (n.owner != tokenOwner) {
            revert NodeOwnedByAnotherOwner(node, n.owner);
        } else if (n.appId != proof.appId || n.kmsRoot != root || n.purposeId != purposeId) {
            _leaveGroup(n);
        }
        uint64 power = n.tokens + 1;
        n.tokens = power;
        if (n.index == 0) {
            n.appId = proof.appId;
            n.kmsRoot = root;
            n.purposeId = purposeId;
            _joinGroup(node, n);
        } else {
            _groups[_groupKey(n)].power += 1;
        }
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
    /// approved for all of that owner's tokens); the URL rules are those of `registerNode`.
    function updateConnectionUrl(address node, string calldata connectionUrl) external {
        Node storage n = _nodes[node];
        address nodeOwner = n.owner;
        if (n.index == 0) revert NodeNotRegistered(node);
        if (msg.sender != nodeOwner && !isApprovedForAll(nodeOwner, msg.sender)) {
            revert NotTokenOwnerOrApproved(msg.sender);
        }
        _checkConnectionUrl(connectionUrl);
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

    /// @notice Counted validators, skipping `offset` of them, at most `limit`: the nodes of each
    /// allowed app id (in `allowedAppIds()` order) verified under the current KMS root and purpose.
    function validators(uint256 offset, uint256 limit) external view returns (ValidatorInfo[] memory page) {
        if (limit > MAX_PAGE_LIMIT) revert LimitTooLarge(limit, MAX_PAGE_LIMIT);
        address[] memory nodes = _countedPage(offset, limit);
        page = new ValidatorInfo[](nodes.length);
        for (uint256 i = 0; i < nodes.length; ++i) {
            Node storage n = _nodes[nodes[i]];
            page[i] = ValidatorInfo({
                node: nodes[i],
                publicKey: n.publicKey,
                power: n.tokens,
                connectionUrl: n.connectionUrl,
                instanceId: n.instanceId
            });
        }
    }

    /// @notice Counted nodes and their URLs, in the order of `validators`, skipping `offset`, at
    /// most `limit`.
    function getPeers(uint256 offset, uint256 limit) external view returns (Peer[] memory page) {
        if (limit > MAX_PAGE_LIMIT) revert LimitTooLarge(limit, MAX_PAGE_LIMIT);
        address[] memory nodes = _countedPage(offset, limit);
        page = new Peer[](nodes.length);
        for (uint256 i = 0; i < nodes.length; ++i) {
            page[i] = Peer({node: nodes[i], connectionUrl: _nodes[nodes[i]].connectionUrl});
        }
    }

    /// @notice Number of counted validators.
    function validatorCount() external view returns (uint256 count) {
        (address root, uint96 purposeId, uint256 apps) = (_kmsRoot, _purposeId, _allowedAppIds.length);
        for (uint256 a = 0; a < apps; ++a) {
            count += _groups[_groupKeyOf(_allowedAppIds[a], root, purposeId)].size;
        }
    }

    /// @notice Sum of the power of the counted validators.
    function totalPower() external view returns (uint256 total) {
        (address root, uint96 purposeId, uint256 apps) = (_kmsRoot, _purposeId, _allowedAppIds.length);
        for (uint256 a = 0; a < apps; ++a) {
            total += _groups[_groupKeyOf(_allowedAppIds[a], root, purposeId)].power;
        }
    }

    /// @notice The node `tokenId` authorizes, or zero.
    function nodeOf(uint256 tokenId) external view returns (address) {
        return _tokenNode[tokenId];
    }

    /// @notice Voting power of `node`: its token count if it is counted, else 0.
    function powerOf(address node) external view returns (uint256) {
        Node storage n = _nodes[node];
        return _counted(n) ? n.tokens : 0;
    }

    /// @notice Number of nodes with at least one authorizing token, counted or not.
    function nodeCount() external view returns (uint256) {
        return _nodeCount;
    }

    /// @notice Everything stored about `node` (zero record if it has no authorizing token).
    function nodeInfo(address node) external view returns (NodeInfo memory info) {
        Node storage n = _nodes[node];
        info = NodeInfo({
            node: node,
            owner: n.owner,
            publicKey: n.publicKey,
            tokens: n.tokens,
            counted: _counted(n),
            appId: n.appId,
            kmsRoot: n.kmsRoot,
            purposeHash: n.purposeId == 0 ? bytes32(0) : _purposeHashes[n.purposeId - 1],
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
        emit NodeAuthorizationEnded(tokenId, node, reason);
        if (n.tokens > 1) {
            n.tokens -= 1;
            _groups[_groupKey(n)].power -= 1;
            return;
        }
        // The last token: out of its group, then drop the record (nonces stay).
        _leaveGroup(n);
        --_nodeCount;
        emit NodeRemoved(node, n.owner);
        delete _nodes[node];
    }

    /// @dev Appends `node` to the group of its stored configuration, with its token count.
    function _joinGroup(address node, Node storage n) private {
        Group storage g = _groups[_groupKey(n)];
        uint128 size = g.size;
        g.nodes[size] = node;
        (g.size, g.power) = (size + 1, g.power + n.tokens);
        // casting to uint32 is safe: a group of 2^32 - 1 nodes cannot be paid for.
        // forge-lint: disable-next-line(unsafe-typecast)
        n.index = uint32(size + 1);
    }

    /// @dev Takes `n` out of its group (the group's last node takes its place), with its token
    /// count; leaves `index` 0.
    function _leaveGroup(Node storage n) private {
        Group storage g = _groups[_groupKey(n)];
        uint256 idx = n.index - 1;
        uint128 last = g.size - 1;
        if (idx != last) {
            address moved = g.nodes[last];
            g.nodes[idx] = moved;
            // casting to uint32 is safe: idx + 1 <= the group size, stored as uint32 on join.
            // forge-lint: disable-next-line(unsafe-typecast)
            _nodes[moved].index = uint32(idx + 1);
        }
        delete g.nodes[last];
        (g.size, g.power) = (last, g.power - n.tokens);
        n.index = 0;
    }

    /// @dev The counted nodes of the page (offset, limit): whole groups are skipped by their length.
    function _countedPage(uint256 offset, uint256 limit) private view returns (address[] memory nodes) {
        nodes = new address[](limit);
        uint256 found;
        (address root, uint96 purposeId, uint256 apps) = (_kmsRoot, _purposeId, _allowedAppIds.length);
        for (uint256 a = 0; a < apps && found < limit; ++a) {
            Group storage g = _groups[_groupKeyOf(_allowedAppIds[a], root, purposeId)];
            uint256 len = g.size;
            if (offset >= len) {
                offset -= len;
                continue;
            }
            for (uint256 i = offset; i < len && found < limit; ++i) {
                nodes[found++] = g.nodes[i];
            }
            offset = 0;
        }
        assembly ("memory-safe") {
            mstore(nodes, found)
        }
    }

    function _groupKey(Node storage n) private view returns (bytes32) {
        return _groupKeyOf(n.appId, n.kmsRoot, n.purposeId);
    }

    /// @dev The key of the group of nodes verified under (appId, root, purposeId). The current
    /// groups use the current root: while it is unset (zero) they are empty, a stored root never is.
    function _groupKeyOf(bytes20 appId, address root, uint96 purposeId) private pure returns (bytes32) {
        return keccak256(abi.encode(appId, root, purposeId));
    }

    function _counted(Node storage n) private view returns (bool) {
        // A stored kmsRoot is never zero, so an unset root counts nobody.
        return n.tokens != 0 && n.kmsRoot == _kmsRoot && n.purposeId == _purposeId
            && _allowedAppIdIndex[n.appId] != 0;
    }

    /// @dev The connection URL rules of `registerNode`, in one pass; reverts `UrlTooLong`, or
    /// `InvalidConnectionUrl` with the offset of the first byte that breaks them (the start of a
    /// wrong or empty segment, the length for a URL that ends too early). The membership crate
    /// (`connection_url`) applies the same rules; test/fixtures/connection_urls.json holds both.
    function _checkConnectionUrl(string calldata url) private pure {
        uint256 len = bytes(url).length;
        if (len > MAX_URL_LENGTH) revert UrlTooLong(len, MAX_URL_LENGTH);
        if (len == 0 || bytes(url)[0] != "/") revert InvalidConnectionUrl(0);
        uint256 segment; // number of '/' read: segment 1 protocol, 2 host, 3 transport, 4 port, 5+ rest
        uint256 start; // offset of the current segment's first byte
        uint256 word; // the segment's first four bytes (protocol names), or the port's value
        uint256 offset;
        assembly ("memory-safe") {
            offset := url.offset
        }
        // unchecked: i < 256, and the port stays below 65536 * 10 + 10
        unchecked {
            for (uint256 i = 0; i < len; ++i) {
                uint256 c;
                assembly ("memory-safe") {
                    c := byte(0, calldataload(add(offset, i)))
                }
                if (c == 0x2f) {
                    if (i != 0) _checkSegment(segment, start, i, word);
                    ++segment;
                    (start, word) = (i + 1, 0);
                } else if (c < 0x21 || c > 0x7e) {
                    revert InvalidConnectionUrl(i);
                } else if (segment == 4) {
                    if (c < 0x30 || c > 0x39) revert InvalidConnectionUrl(i);
                    word = word * 10 + c - 0x30;
                    if (word > type(uint16).max) revert InvalidConnectionUrl(i);
                } else if (i - start < 4) {
                    word = (word << 8) | c;
                }
            }
        }
        _checkSegment(segment, start, len, word);
        if (segment < 4) revert InvalidConnectionUrl(len);
    }

    /// @dev Checks the URL segment [start, end) of number `segment` (see `_checkConnectionUrl`).
    function _checkSegment(uint256 segment, uint256 start, uint256 end, uint256 word) private pure {
        if (end == start) revert InvalidConnectionUrl(start);
        bool ok = true;
        if (segment == 1) {
            // ip4, ip6, dns, dns4, dns6
            ok = end - start <= 4
                && (word == 0x697034
                    || word == 0x697036
                    || word == 0x646e73
                    || word == 0x646e7334
                    || word == 0x646e7336);
        } else if (segment == 3) {
            // tcp, udp
            ok = end - start == 3 && (word == 0x746370 || word == 0x756470);
        } else if (segment == 4) {
            ok = word != 0;
        }
        if (!ok) revert InvalidConnectionUrl(start);
    }

    /// @dev Checks 1 and 2 of DESIGN section 3; returns the node (derived key) address.
    function _verifyProof(DstackProof calldata proof) private view returns (address node) {
        address root = _kmsRoot;
        if (root == address(0)) revert KmsRootNotSet();
        if (_allowedAppIdIndex[proof.appId] == 0) revert AppIdNotAllowed(proof.appId);
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
