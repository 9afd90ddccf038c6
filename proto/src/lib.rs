//! The wire schema shared by every node: proposals, votes, timeouts, certificates, batches and
//! sync messages, as prost types. Only data lives here; validation and conversion to consensus
//! types belong to `node`, the protocol itself to `consensus`.
