use super::*;
use crate::exec_overlay::test_block as executed;

#[test]
fn an_older_safety_state_never_overwrites_a_newer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path()).expect("open");
    let newer = SafetyState {
        last_voted_round: 7,
        highest_timeout_round: 6,
        ..SafetyState::new(2)
    };
    s.write(|w| w.put_safety(&newer)).expect("first write");
    let older_round = SafetyState {
        last_voted_round: 6,
        ..newer.clone()
    };
    let older_epoch = SafetyState {
        last_voted_round: 99,
        ..SafetyState::new(1)
    };
    for (older, counter) in [(older_round, "last_voted_round"), (older_epoch, "epoch")] {
        let e = s.write(|w| w.put_safety(&older)).expect_err("older state");
        assert!(
            matches!(e, StorageError::SafetyRegression(c) if c == counter),
            "{e}"
        );
    }
    let stored = s.get_meta(meta::SAFETY).expect("read").expect("stored");
    assert_eq!(SafetyState::decode(&stored).expect("decode"), newer);
    // Equal or later states are written; a later epoch supersedes the rounds.
    let later_epoch = SafetyState::new(3);
    s.write(|w| {
        w.put_safety(&newer)?;
        w.put_safety(&later_epoch)
    })
    .expect("equal, then later");
    let stored = s.get_meta(meta::SAFETY).expect("read").expect("stored");
    assert_eq!(SafetyState::decode(&stored).expect("decode"), later_epoch);
}

#[test]
fn writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path()).expect("open");
        s.write(|w| {
            w.put_block(&[1; 32], b"block")?;
            w.put_qc(&[1; 32], b"qc")?;
            w.put_meta(meta::SAFETY, b"safe")?;
            w.commit_block(1, &[1; 32], b"proof")?;
            w.put_epoch_change(0, b"rec0")?;
            w.put_epoch_change(1, b"rec1")
        })
        .expect("write");
        s.apply_executed(1, executed(&[7, 8], &[("k", Some("v"))]))
            .expect("execute");
        s.flush_executed().expect("flush");
    }
    let s = Store::open(dir.path()).expect("reopen");
    assert_eq!(s.executed_height(), 1);
    assert_eq!(s.kv_get(b"k").expect("kv"), Some(b"v".to_vec()));
    assert_eq!(s.get_block(&[1; 32]).expect("get"), Some(b"block".to_vec()));
    assert_eq!(s.get_qc(&[1; 32]).expect("get"), Some(b"qc".to_vec()));
    assert_eq!(
        s.get_meta(meta::SAFETY).expect("get"),
        Some(b"safe".to_vec())
    );
    assert_eq!(s.committed_height().expect("h"), 1);
    assert_eq!(s.committed_id(1).expect("id"), Some([1; 32]));
    assert_eq!(s.height_of(&[1; 32]).expect("h"), Some(1));
    assert_eq!(s.commit_proof(1).expect("p"), Some(b"proof".to_vec()));
    assert_eq!(s.block_txs(1).expect("txs"), vec![[7; 32], [8; 32]]);
    assert_eq!(s.tx_height(&[8; 32]).expect("tx"), Some(1));
    assert_eq!(s.tx_height(&[9; 32]).expect("tx"), None);
    assert_eq!(
        s.tx_heights(&[[9; 32], [7; 32]]).expect("txs"),
        vec![None, Some(1)]
    );
    let recs = s.epoch_changes_since(1, 10).expect("recs");
    assert_eq!(recs, vec![(1, b"rec1".to_vec())]);
}

#[test]
fn failed_closure_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path()).expect("open");
    let r: Result<(), _> = s.write(|w| {
        w.put_block(&[2; 32], b"b")?;
        Err(StorageError::Malformed("test".into()))
    });
    assert!(r.is_err());
    assert_eq!(s.get_block(&[2; 32]).expect("get"), None);
}

#[test]
fn heights_have_no_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path()).expect("open");
    let r = s.write(|w| w.commit_block(2, &[1; 32], b"p"));
    assert!(matches!(
        r,
        Err(StorageError::HeightGap {
            got: 2,
            expected: 1
        })
    ));
    s.write(|w| {
        w.commit_block(1, &[1; 32], b"p")?;
        w.commit_block(2, &[2; 32], b"p")
    })
    .expect("in order");
    assert_eq!(s.committed_height().expect("h"), 2);
}

#[test]
fn second_open_of_a_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = Store::open(dir.path()).expect("open");
    match Store::open(dir.path()) {
        Err(StorageError::Locked(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn lock_is_released_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open"));
    Store::open(dir.path()).expect("reopen after drop");
}

#[test]
fn corrupt_db_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(DB_FILE), vec![0xAB; 8192]).expect("write garbage");
    match Store::open(dir.path()) {
        Err(e @ StorageError::Corrupt { .. }) => {
            assert!(e.to_string().contains("corrupt"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn pending_blocks_come_back_in_round_order_until_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path()).expect("open");
        s.write(|w| {
            w.put_pending_block(&[3; 32], 7, b"r7")?;
            w.put_pending_block(&[1; 32], 5, b"r5")?;
            w.put_pending_block(&[2; 32], 6, b"r6")
        })
        .expect("write");
    }
    let s = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        s.uncommitted_blocks().expect("list"),
        vec![b"r5".to_vec(), b"r6".to_vec(), b"r7".to_vec()]
    );
    s.write(|w| w.prune_pending(6)).expect("prune");
    assert_eq!(s.uncommitted_blocks().expect("list"), vec![b"r7".to_vec()]);
    assert_eq!(s.get_block(&[1; 32]).expect("get"), Some(b"r5".to_vec()));
}

#[test]
fn executed_effects_are_read_at_once_and_lost_in_a_crash_only_above_the_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(s.executed_height(), 0);
        s.apply_executed(1, executed(&[1], &[("a", Some("1")), ("b", Some("1"))]))
            .expect("1");
        s.flush_executed().expect("flush");
        s.apply_executed(2, executed(&[2], &[("a", None), ("c", Some("2"))]))
            .expect("2");
        // Waiting effects read like durable ones.
        assert_eq!(s.kv_get(b"a").expect("a"), None);
        assert_eq!(s.kv_get(b"b").expect("b"), Some(b"1".to_vec()));
        assert_eq!(s.kv_get(b"c").expect("c"), Some(b"2".to_vec()));
        assert_eq!(
            s.tx_heights(&[[1; 32], [2; 32], [3; 32]]).expect("idx"),
            vec![Some(1), Some(2), None]
        );
        assert_eq!(s.block_txs(2).expect("txs"), vec![[2; 32]]);
        assert!(matches!(
            s.apply_executed(4, Executed::default()),
            Err(StorageError::HeightGap {
                got: 4,
                expected: 3
            })
        ));
        // Dropped without a flush: a crash.
    }
    let s = Store::open(dir.path()).expect("reopen");
    assert_eq!(s.executed_height(), 1, "height 2 was never written");
    assert_eq!(s.kv_get(b"a").expect("a"), Some(b"1".to_vec()));
    assert_eq!(s.kv_get(b"c").expect("c"), None);
    assert_eq!(s.tx_height(&[2; 32]).expect("idx"), None);
    assert_eq!(s.tx_height(&[1; 32]).expect("idx"), Some(1));
}

#[test]
fn index_runs_merge_into_the_index_file_and_a_crash_rebuilds_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = FlushPolicy {
        max_txs: 1,
        max_blocks: 1,
        max_age: std::time::Duration::from_secs(60),
        max_index: 3,
    };
    {
        let s = Store::open(dir.path())
            .expect("open")
            .with_flush_policy(policy);
        s.apply_executed(1, executed(&[1, 2], &[])).expect("1");
        s.apply_executed(2, executed(&[3], &[]))
            .expect("2: flushes and freezes 1..=2");
        s.wait_index_merge();
        s.apply_executed(3, executed(&[4], &[])).expect("3");
        assert_eq!(
            s.tx_heights(&[[1; 32], [3; 32], [4; 32], [5; 32]])
                .expect("idx"),
            vec![Some(1), Some(2), Some(3), None]
        );
        let txn = s.index_db.begin_read().expect("read");
        assert_eq!(
            txn.open_table(INDEX_META)
                .expect("meta")
                .get(INDEXED)
                .expect("get")
                .map(|v| v.value()),
            Some(2)
        );
        assert!(
            txn.open_table(TX_INDEX)
                .expect("t")
                .get(&[4; 32])
                .expect("get")
                .is_none(),
            "height 3 is not merged"
        );
    }
    {
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.executed_height(), 3);
        assert_eq!(
            s.tx_heights(&[[2; 32], [4; 32], [5; 32]]).expect("idx"),
            vec![Some(1), Some(3), None],
            "height 3's entry comes back from its stored transaction list"
        );
    }
    std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("lose the index file");
    let s = Store::open(dir.path()).expect("reopen without the index file");
    assert_eq!(
        s.tx_heights(&[[1; 32], [3; 32], [4; 32]]).expect("idx"),
        vec![Some(1), Some(2), Some(3)],
        "rebuilt from every stored transaction list"
    );
}

#[test]
fn lazy_writes_are_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(dir.path()).expect("open");
    s.write_lazy(|w| w.put_batch(&[3; 32], b"batch"))
        .expect("lazy");
    assert!(s.has_batch(&[3; 32]).expect("has"));
    assert_eq!(s.get_batch(&[3; 32]).expect("get"), Some(b"batch".to_vec()));
}

#[test]
fn a_store_of_an_older_layout_is_refused_by_name() {
    for table in ["batches", "tx_index"] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            // Where an older layout kept its batches, or its transaction index.
            s.write(|w| {
                if table == "batches" {
                    w.txn
                        .open_table(OLD_BATCHES)?
                        .insert(&[1; 32], &b"old"[..])?;
                } else {
                    w.txn.open_table(TX_INDEX)?.insert(&[1; 32], 1)?;
                }
                Ok(())
            })
            .expect("old layout");
        }
        let e = Store::open(dir.path()).expect_err("an older layout");
        assert!(
            matches!(&e, StorageError::Corrupt { detail, .. } if detail.contains(table)),
            "{e}"
        );
    }
}
