//! The built-in replicated application (DESIGN section 8): a key-value store, the "cluster state".
//!
//! A transaction is a small JSON object, UTF-8:
//!
//! ```json
//! {"op": "put", "key": "name", "value": "text", "nonce": 7}
//! {"op": "delete", "key": "name"}
//! ```
//!
//! `nonce` is optional and ignored by execution: it only makes two otherwise equal transactions
//! distinct (transactions are de-duplicated by hash). Keys are 1 to [`MAX_KEY_BYTES`] bytes,
//! values at most [`MAX_VALUE_BYTES`] bytes; unknown fields are refused.
//!
//! Execution happens in [`commit_block`], right after the durable write that records the block
//! as committed. Its effects are grouped across blocks before they reach the disk (see
//! [`crate::exec_overlay`]); a crash loses none of them, because the executed height is stored
//! with them and a restart executes the committed heights above it again ([`execute_committed`]),
//! and none is repeated, because that height moves only with them. A transaction whose
//! hash was already committed is skipped (committed once, executed once); a transaction that does
//! not parse (only a faulty node's batch can carry one: the API refuses them) is recorded as
//! committed and changes nothing, so every node executes the same sequence.

use std::borrow::Cow;
#[cfg(feature = "full")]
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::Hash32;
#[cfg(feature = "full")]
use crate::exec_overlay::Executed;
use crate::mempool::TxHash;
#[cfg(feature = "full")]
use crate::mempool::{SealedBatch, tx_hash};
#[cfg(feature = "full")]
use crate::storage::{StorageError, Store};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 60 * 1024;

/// A transaction of the KV application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvTx {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
        /// Optional, makes repeated equal writes distinct transactions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// Removes `key` (a no-op when absent).
    Delete {
        /// The key.
        key: String,
        /// Optional, makes repeated equal deletes distinct transactions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

/// A transaction as it is written, decoded in one pass: serde's internally tagged enums buffer
/// every field before choosing the variant, and this is the execution hot path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKvTx<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(default)]
    nonce: Option<u64>,
}

/// Why a transaction is not a valid KV transaction, or why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The bytes are not a KV transaction.
    #[error("invalid transaction: {0}")]
    Invalid(String),
    /// A batch the block orders is not in storage (the driver must fetch it first).
    #[error("batch {} of the committed block is missing", hex::encode(.0))]
    MissingBatch(Hash32),
    /// A stored batch does not decode.
    #[error("stored batch {} is malformed", hex::encode(.0))]
    MalformedBatch(Hash32),
    /// Storage failed.
    #[cfg(feature = "full")]
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl KvTx {
    /// Parses and checks a transaction.
    pub fn decode(bytes: &[u8]) -> Result<Self, AppError> {
        let raw: RawKvTx<'_> =
            serde_json::from_slice(bytes).map_err(|e| AppError::Invalid(e.to_string()))?;
        let tx = match (raw.op.as_ref(), raw.value) {
            ("put", Some(value)) => KvTx::Put {
                key: raw.key.into_owned(),
                value: value.into_owned(),
                nonce: raw.nonce,
            },
            ("put", None) => return Err(AppError::Invalid("missing field `value`".into())),
            ("delete", None) => KvTx::Delete {
                key: raw.key.into_owned(),
                nonce: raw.nonce,
            },
            ("delete", Some(_)) => {
                return Err(AppError::Invalid("a delete takes no `value`".into()));
            }
            (op, _) => {
                return Err(AppError::Invalid(format!(
                    "unknown op `{op}`, expected `put` or `delete`"
                )));
            }
        };
        let (key, value) = match &tx {
            KvTx::Put { key, value, .. } => (key, Some(value)),
            KvTx::Delete { key, .. } => (key, None),
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(AppError::Invalid(format!(
                "key must be 1 to {MAX_KEY_BYTES} bytes"
            )));
        }
        if value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(AppError::Invalid(format!(
                "value exceeds {MAX_VALUE_BYTES} bytes"
            )));
        }
        Ok(tx)
    }

    /// The transaction's bytes (compact JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A block to record as committed and execute.
#[derive(Clone, Copy, Debug)]
pub struct CommitInput<'a> {
    /// Its committed height (the previous height + 1).
    pub height: u64,
    /// Its id.
    pub id: &'a Hash32,
    /// Its encoding (`proto::v1::Block`), stored under its id.
    pub block: &'a [u8],
    /// Its commit proof (`proto::v1::CommitProof`).
    pub proof: &'a [u8],
    /// The batches it orders, in order; all must be stored.
    pub batch_digests: &'a [Hash32],
    /// The transaction hashes of each batch where the caller already has them (the mempool
    /// computed them when the batch was sealed or received), index-aligned with
    /// `batch_digests`; missing or mismatched entries are computed here.
    pub known_hashes: &'a [Option<Vec<TxHash>>],
    /// Pending blocks at or below this round are forgotten in the same write (the committed
    /// root's round), if given.
    pub prune_round: Option<u64>,
}

/// What executing a committed block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitResult {
    /// Transactions committed at this height (executed, or recorded when invalid), in order.
    pub committed: Vec<TxHash>,
    /// Transactions skipped because they were committed before (or earlier in this block).
    pub duplicates: usize,
    /// Transactions that did not parse (recorded, no effect).
    pub invalid: usize,
}

#[cfg(feature = "full")]
/// Records a block as committed, durably, then executes its transactions.
///
/// The record (height, id, proof, block bytes) is durable when this returns; the effects of
/// execution are visible at once and become durable with the store's next group write (see
/// [`crate::exec_overlay`]): a crash in between is repaired by [`execute_committed`] at restart.
pub fn commit_block(store: &Store, input: CommitInput<'_>) -> Result<CommitResult, AppError> {
    let batches = stored_batches(store, input.batch_digests)?;
    store.write(|w| {
        w.commit_block(input.height, input.id, input.proof)?;
        w.put_block(input.id, input.block)?;
        w.put_block_batches(input.height, input.batch_digests)?;
        for digest in input.batch_digests {
            w.forget_local_batch(digest)?;
        }
        if let Some(round) = input.prune_round {
            w.prune_pending(round)?;
        }
        Ok(())
    })?;
    execute(
        store,
        input.height,
        input.batch_digests,
        &batches,
        input.known_hashes,
    )
}

#[cfg(feature = "full")]
/// Executes the committed block at `height` again from its stored batches: what a restart does
/// for every committed height above [`Store::executed_height`].
pub fn execute_committed(
    store: &Store,
    height: u64,
    batch_digests: &[Hash32],
) -> Result<CommitResult, AppError> {
    let batches = stored_batches(store, batch_digests)?;
    execute(store, height, batch_digests, &batches, &[])
}

#[cfg(feature = "full")]
fn stored_batches(store: &Store, digests: &[Hash32]) -> Result<Vec<Vec<u8>>, AppError> {
    store
        .get_batches(digests)?
        .into_iter()
        .zip(digests)
        .map(|(b, d)| b.ok_or(AppError::MissingBatch(*d)))
        .collect()
}

#[cfg(feature = "full")]
/// Executes one block's batches into the store's overlay.
///
/// Committed once, executed once: the first occurrence in block order of a hash never
/// committed before is new. The state changes are folded to each key's last write, so the
/// result is the same as applying the transactions one by one.
fn execute(
    store: &Store,
    height: u64,
    digests: &[Hash32],
    batches: &[Vec<u8>],
    known_hashes: &[Option<Vec<TxHash>>],
) -> Result<CommitResult, AppError> {
    let mut txs: Vec<&[u8]> = Vec::new();
    let mut hashes: Vec<TxHash> = Vec::new();
    for (k, (digest, bytes)) in digests.iter().zip(batches).enumerate() {
        let batch = SealedBatch::tx_slices(bytes).map_err(|_| AppError::MalformedBatch(*digest))?;
        match known_hashes.get(k) {
            Some(Some(known)) if known.len() == batch.len() => hashes.extend_from_slice(known),
            _ => hashes.extend(batch.iter().map(|tx| tx_hash(tx))),
        }
        txs.extend(batch);
    }
    let before = store.tx_heights(&hashes)?;
    let mut in_block: HashSet<&TxHash> = HashSet::with_capacity(hashes.len());
    let mut out = CommitResult::default();
    let mut done = Executed::default();
    for ((tx, hash), before) in txs.iter().zip(&hashes).zip(before) {
        if before.is_some() || !in_block.insert(hash) {
            out.duplicates += 1;
            continue;
        }
        match KvTx::decode(tx) {
            Ok(KvTx::Put { key, value, .. }) => {
                done.writes
                    .insert(key.into_bytes(), Some(value.into_bytes()));
            }
            Ok(KvTx::Delete { key, .. }) => {
                done.writes.insert(key.into_bytes(), None);
            }
            Err(_) => out.invalid += 1,
        }
        out.committed.push(*hash);
    }
    done.committed = out.committed.clone();
    store.apply_executed(height, done)?;
    Ok(out)
}

#[cfg(feature = "full")]
/// The value of `key` in the cluster state.
pub fn get(store: &Store, key: &str) -> Result<Option<String>, AppError> {
    Ok(store
        .kv_get(key.as_bytes())?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

#[cfg(all(test, feature = "full"))]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Vec<u8> {
        KvTx::Put {
            key: k.into(),
            value: v.into(),
            nonce: None,
        }
        .encode()
    }

    fn store_batch(store: &Store, txs: &[Vec<u8>]) -> Hash32 {
        let b = SealedBatch::from_txs(txs);
        store
            .write(|w| w.put_batch(&b.digest, &b.encoded))
            .expect("store batch");
        b.digest
    }

    fn commit(store: &Store, height: u64, digests: &[Hash32]) -> Result<CommitResult, AppError> {
        commit_block(
            store,
            CommitInput {
                height,
                id: &[height as u8; 32],
                block: b"block",
                proof: b"proof",
                batch_digests: digests,
                known_hashes: &[],
                prune_round: None,
            },
        )
    }

    #[test]
    fn encoding_is_documented_json() {
        let tx = KvTx::decode(br#"{"op":"put","key":"a","value":"b","nonce":3}"#).expect("ok");
        assert_eq!(
            tx,
            KvTx::Put {
                key: "a".into(),
                value: "b".into(),
                nonce: Some(3)
            }
        );
        assert_eq!(
            put("a", "b"),
            br#"{"op":"put","key":"a","value":"b"}"#.to_vec()
        );
        assert!(KvTx::decode(br#"{"op":"delete","key":"a"}"#).is_ok());
        for bad in [
            &br#"{"op":"put","key":"","value":"b"}"#[..],
            br#"{"op":"put","key":"a"}"#,
            br#"{"op":"put","key":"a","value":"b","extra":1}"#,
            br#"{"op":"merge","key":"a"}"#,
            br#"{"op":"delete","key":"a","value":"b"}"#,
            br#"{"key":"a","value":"b"}"#,
            br#"{"op":"put","key":"a","key":"b","value":"c"}"#,
            br#"{"op":"put","key":"a","value":"b","nonce":-1}"#,
            b"not json",
        ] {
            assert!(
                KvTx::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(KvTx::decode(&put(&long_key, "v")).is_err());
        assert!(KvTx::decode(&put("k", &"v".repeat(MAX_VALUE_BYTES + 1))).is_err());
    }

    #[test]
    fn executes_in_order_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let del = KvTx::Delete {
            key: "a".into(),
            nonce: None,
        }
        .encode();
        let b1 = store_batch(&store, &[put("a", "1"), put("b", "2")]);
        let b2 = store_batch(&store, &[put("a", "3"), b"junk".to_vec(), put("b", "2")]);
        let r = commit(&store, 1, &[b1, b2]).expect("commit 1");
        assert_eq!(r.committed.len(), 4);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.invalid, 1);
        assert_eq!(get(&store, "a").expect("get").as_deref(), Some("3"));
        assert_eq!(get(&store, "b").expect("get").as_deref(), Some("2"));
        // The same batch again at a later height executes nothing.
        let r2 = commit(&store, 2, &[b1]).expect("commit 2");
        assert!(r2.committed.is_empty());
        assert_eq!(r2.duplicates, 2);
        assert_eq!(get(&store, "a").expect("get").as_deref(), Some("3"));
        let b3 = store_batch(&store, &[del]);
        commit(&store, 3, &[b3]).expect("commit 3");
        assert_eq!(get(&store, "a").expect("get"), None);
        assert_eq!(
            store.tx_height(&tx_hash(&put("a", "3"))).expect("idx"),
            Some(1)
        );
        assert_eq!(store.block_txs(1).expect("txs"), r.committed);
        assert_eq!(store.committed_height().expect("h"), 3);
    }

    #[test]
    fn a_restart_executes_again_what_a_crash_lost_and_nothing_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (b1, b2);
        {
            let store = Store::open(dir.path()).expect("open");
            b1 = store_batch(&store, &[put("a", "1"), put("b", "1")]);
            b2 = store_batch(&store, &[put("a", "2"), put("b", "1")]);
            commit(&store, 1, &[b1]).expect("commit 1");
            store.flush_executed().expect("flush");
            let r = commit(&store, 2, &[b2]).expect("commit 2");
            assert_eq!(r.duplicates, 1);
            assert_eq!(get(&store, "a").expect("get").as_deref(), Some("2"));
            // Dropped before the group write: a crash after height 2's record was durable.
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.committed_height().expect("h"), 2);
        assert_eq!(store.executed_height(), 1);
        assert_eq!(get(&store, "a").expect("get").as_deref(), Some("1"));
        let again = execute_committed(&store, 2, &[b2]).expect("execute 2 again");
        assert_eq!(again.committed, vec![tx_hash(&put("a", "2"))]);
        assert_eq!(
            again.duplicates, 1,
            "height 1's transaction stays executed once"
        );
        assert_eq!(get(&store, "a").expect("get").as_deref(), Some("2"));
        assert!(matches!(
            execute_committed(&store, 2, &[b2]),
            Err(AppError::Storage(StorageError::HeightGap { .. }))
        ));
    }

    #[test]
    fn missing_batch_commits_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let b1 = store_batch(&store, &[put("a", "1")]);
        let err = commit(&store, 1, &[b1, [9; 32]]).expect_err("missing");
        assert!(matches!(err, AppError::MissingBatch(d) if d == [9; 32]));
        assert_eq!(store.committed_height().expect("h"), 0);
        assert_eq!(get(&store, "a").expect("get"), None);
    }
}
