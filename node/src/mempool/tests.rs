use super::*;

#[test]
fn from_canonical_matches_from_wire_and_checks_limits() {
    let cfg = MempoolConfig::default();
    let txs = vec![b"a".to_vec(), vec![7u8; 300]];
    let b = SealedBatch::from_canonical(encode_batch(&txs), &cfg).expect("valid");
    assert_eq!(b, SealedBatch::from_txs(&txs));
    let small = MempoolConfig {
        max_batch_txs: 1,
        ..MempoolConfig::default()
    };
    assert_eq!(
        SealedBatch::from_canonical(encode_batch(&txs), &small),
        Err(MempoolError::BatchTooLarge)
    );
    assert_eq!(
        SealedBatch::from_canonical(encode_batch(&[Vec::<u8>::new()]), &cfg),
        Err(MempoolError::EmptyTx)
    );
    assert_eq!(
        SealedBatch::from_canonical(vec![0x12, 0], &cfg),
        Err(MempoolError::MalformedBatch)
    );
}

#[test]
fn tx_slices_borrow_exactly_the_canonical_encoding() {
    let txs = vec![b"a".to_vec(), vec![7u8; 300], b"ccc".to_vec()];
    let enc = encode_batch(&txs);
    let slices = SealedBatch::tx_slices(&enc).expect("canonical");
    assert_eq!(slices, txs.iter().map(|t| t.as_slice()).collect::<Vec<_>>());
    assert_eq!(
        SealedBatch::tx_slices(&[]).expect("empty"),
        Vec::<&[u8]>::new()
    );
    // A truncated frame, another field number, and a non-minimal length varint are refused.
    assert!(SealedBatch::tx_slices(&enc[..enc.len() - 1]).is_err());
    assert!(SealedBatch::tx_slices(&[0x12, 1, b'a']).is_err());
    assert!(SealedBatch::tx_slices(&[0x0a, 0x81, 0x00, b'a']).is_err());
}

#[test]
fn restored_local_batches_are_pending_and_proposed_again() {
    let t = Instant::now();
    let mut m = Mempool::new(MempoolConfig::default());
    let txs = vec![b"a".to_vec(), b"b".to_vec()];
    let done = tx_hash(b"a");
    let b = m
        .restore_local(7, &txs, t, |h| *h == done)
        .expect("one transaction left");
    assert!(!m.is_pending(&done));
    assert!(m.is_pending(&tx_hash(b"b")));
    assert_eq!(m.payload(10, &HashSet::new()), vec![b.digest]);
    assert_eq!(
        m.open_batch_seq(),
        8,
        "new seals continue after the restored ones"
    );
    assert!(
        m.restore_local(3, &txs, t, |_| false).is_none(),
        "known batch"
    );
    assert!(
        Mempool::new(MempoolConfig::default())
            .restore_local(1, &txs, t, |_| true)
            .is_none(),
        "fully committed batch"
    );
}

fn small() -> MempoolConfig {
    MempoolConfig {
        max_tx_bytes: 100,
        max_batch_bytes: 1_000,
        max_batch_txs: 3,
        batch_timeout: Duration::from_millis(50),
        max_pending_txs: 5,
        max_pending_bytes: 10_000,
        max_batches: 10,
        max_block_txs: 10_000,
        max_block_bytes: 1 << 20,
    }
}

fn never(_: &TxHash) -> Option<u64> {
    None
}

/// Adds a batch from one member of one (no share limit but the mempool's).
fn add(m: &mut Mempool, b: &SealedBatch) -> bool {
    m.add_remote_from(b, Address([9; 20]), 1).is_ok()
}

#[test]
fn digest_is_blake3_of_canonical_encoding() {
    let txs = vec![b"a".to_vec(), b"bc".to_vec()];
    let b = SealedBatch::from_txs(&txs);
    // Field 1, length-delimited: 0x0a len bytes, per transaction.
    assert_eq!(b.encoded, vec![0x0a, 1, b'a', 0x0a, 2, b'b', b'c']);
    assert_eq!(b.digest, *blake3::hash(&b.encoded).as_bytes());
    assert_eq!(b.tx_hashes[1], *blake3::hash(b"bc").as_bytes());
    assert_eq!(SealedBatch::decode_txs(&b.encoded).expect("decode"), txs);
}

#[test]
fn direct_encoding_is_prost_encoding() {
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![],
        vec![Vec::new()],
        vec![
            vec![7; 127],
            vec![8; 128],
            vec![9; 300],
            Vec::new(),
            vec![1; 70_000],
        ],
    ];
    for txs in cases {
        let prost_bytes = proto::v1::Batch {
            transactions: txs.clone(),
        }
        .encode_to_vec();
        assert_eq!(encode_batch(&txs), prost_bytes);
    }
}

#[test]
fn seals_by_count() {
    let mut m = Mempool::new(small());
    let t = Instant::now();
    for i in 0..3u8 {
        m.submit(vec![i + 1], t, never).expect("submit");
    }
    let sealed = m.take_sealed();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].tx_hashes.len(), 3);
    assert_eq!(m.payload(10, &HashSet::new()), vec![sealed[0].digest]);
}

#[test]
fn seals_by_time_not_before() {
    let mut m = Mempool::new(small());
    let t = Instant::now();
    m.submit(b"x".to_vec(), t, never).expect("submit");
    m.tick(t + Duration::from_millis(49));
    assert!(m.take_sealed().is_empty());
    assert_eq!(m.next_deadline(), Some(t + Duration::from_millis(50)));
    m.tick(t + Duration::from_millis(50));
    assert_eq!(m.take_sealed().len(), 1);
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn seals_by_bytes() {
    let mut cfg = small();
    cfg.max_batch_bytes = 150;
    let mut m = Mempool::new(cfg);
    let t = Instant::now();
    m.submit(vec![1; 100], t, never).expect("submit");
    assert!(m.take_sealed().is_empty());
    m.submit(vec![2; 60], t, never).expect("submit");
    assert_eq!(m.take_sealed().len(), 1);
}

#[test]
fn full_then_free_after_commit() {
    let mut m = Mempool::new(small());
    let t = Instant::now();
    for i in 0..5u8 {
        m.submit(vec![i + 1], t, never).expect("submit");
    }
    let err = m.submit(vec![99], t, never).expect_err("full");
    assert!(matches!(err, MempoolError::Full { pending: 5, .. }));
    assert!(err.to_string().contains("mempool full"));
    m.tick(t + Duration::from_secs(1));
    let sealed = m.take_sealed();
    assert_eq!(sealed.len(), 2);
    let lat = m.on_committed(&[sealed[0].digest], &sealed[0].tx_hashes, t);
    assert_eq!(lat.len(), 3, "one latency per local transaction");
    assert_eq!(m.pending_len(), 2);
    m.submit(vec![99], t, never).expect("room again");
    assert_eq!(m.payload(10, &HashSet::new()), vec![sealed[1].digest]);
}

#[test]
fn duplicates_and_committed_are_refused() {
    let mut m = Mempool::new(small());
    let t = Instant::now();
    let h = m.submit(b"tx".to_vec(), t, never).expect("submit");
    assert_eq!(h, tx_hash(b"tx"));
    assert!(m.is_pending(&h));
    assert_eq!(
        m.submit(b"tx".to_vec(), t, never),
        Err(MempoolError::AlreadyPending)
    );
    assert_eq!(
        m.submit(b"old".to_vec(), t, |_| Some(7)),
        Err(MempoolError::AlreadyCommitted(7))
    );
    assert_eq!(m.submit(Vec::new(), t, never), Err(MempoolError::EmptyTx));
    assert!(matches!(
        m.submit(vec![0; 101], t, never),
        Err(MempoolError::TxTooLarge { len: 101, max: 100 })
    ));
}

#[test]
fn committed_elsewhere_leaves_the_open_batch() {
    let mut m = Mempool::new(small());
    let t = Instant::now();
    let h = m.submit(b"tx".to_vec(), t, never).expect("submit");
    m.on_committed(&[], &[h], t);
    assert!(!m.is_pending(&h));
    m.tick(t + Duration::from_secs(1));
    assert!(m.take_sealed().is_empty(), "nothing left to seal");
}

#[test]
fn payload_excludes_and_limits() {
    let mut m = Mempool::new(small());
    let a = SealedBatch::from_txs(&[b"a".to_vec()]);
    let b = SealedBatch::from_txs(&[b"b".to_vec()]);
    let c = SealedBatch::from_txs(&[b"c".to_vec()]);
    assert!(add(&mut m, &a));
    assert!(!add(&mut m, &a), "known batch");
    assert!(add(&mut m, &b));
    assert!(add(&mut m, &c));
    let ex: HashSet<_> = [a.digest].into_iter().collect();
    assert_eq!(m.payload(1, &ex), vec![b.digest]);
    assert_eq!(m.payload(10, &ex), vec![b.digest, c.digest]);
}

#[test]
fn payload_is_bounded_by_transactions() {
    let mut cfg = small();
    cfg.max_block_txs = 3;
    let mut m = Mempool::new(cfg);
    let a = SealedBatch::from_txs(&[b"a".to_vec(), b"b".to_vec()]);
    let b = SealedBatch::from_txs(&[b"c".to_vec(), b"d".to_vec()]);
    let big = SealedBatch::from_txs(&[b"e".to_vec(), b"f".to_vec(), b"g".to_vec(), b"h".to_vec()]);
    assert!(add(&mut m, &big));
    assert!(add(&mut m, &a));
    assert!(add(&mut m, &b));
    let none = HashSet::new();
    assert_eq!(
        m.payload(10, &none),
        vec![big.digest],
        "an oversized batch goes alone"
    );
    let ex: HashSet<_> = [big.digest].into_iter().collect();
    assert_eq!(m.payload(10, &ex), vec![a.digest], "2 + 2 > 3");
}

#[test]
fn remote_batches_are_bounded() {
    let mut cfg = small();
    cfg.max_batches = 2;
    let mut m = Mempool::new(cfg);
    for i in 0..2u8 {
        assert!(add(&mut m, &SealedBatch::from_txs(&[vec![i + 1]])));
    }
    assert!(!add(&mut m, &SealedBatch::from_txs(&[vec![9]])));
    assert_eq!(m.batches_len(), 2);
}

#[test]
fn wire_batches_are_checked_and_renamed_canonically() {
    let cfg = small();
    let wire = proto::v1::Batch {
        transactions: vec![b"a".to_vec()],
    };
    let b = SealedBatch::from_wire(wire, &cfg).expect("ok");
    assert_eq!(b, SealedBatch::from_txs(&[b"a".to_vec()]));
    let too_many = proto::v1::Batch {
        transactions: vec![b"a".to_vec(); 4],
    };
    assert_eq!(
        SealedBatch::from_wire(too_many, &cfg),
        Err(MempoolError::BatchTooLarge)
    );
    let empty_tx = proto::v1::Batch {
        transactions: vec![Vec::new()],
    };
    assert_eq!(
        SealedBatch::from_wire(empty_tx, &cfg),
        Err(MempoolError::EmptyTx)
    );
}

#[test]
fn a_member_holds_at_most_its_share_until_its_batches_commit() {
    let mut cfg = small();
    cfg.max_batches = 8;
    let mut m = Mempool::new(cfg);
    let (a, b) = (Address([1; 20]), Address([2; 20]));
    assert_eq!(m.member_quota(4), 2);
    let batch = |i: u8| SealedBatch::from_txs(&[vec![i]]);
    m.add_remote_from(&batch(1), a, 4).expect("first");
    m.add_remote_from(&batch(2), a, 4).expect("second");
    assert_eq!(m.admit_remote(a, 4), Err(BatchRefusal::OverQuota));
    assert_eq!(
        m.add_remote_from(&batch(3), a, 4),
        Err(BatchRefusal::OverQuota)
    );
    assert_eq!(m.admit_remote(b, 4), Ok(()));
    assert_eq!(m.add_remote_from(&batch(1), b, 4), Err(BatchRefusal::Known));
    m.add_remote_from(&batch(4), b, 4)
        .expect("another member's share");
    assert_eq!(m.batches_len(), 3);
    m.on_committed(&[batch(1).digest], &[], Instant::now());
    m.add_remote_from(&batch(3), a, 4)
        .expect("room again after a commit");
    assert_eq!(
        m.batch_digests(),
        [batch(2).digest, batch(3).digest, batch(4).digest]
            .into_iter()
            .collect()
    );
}

#[test]
fn over_the_disk_quota_nothing_new_is_taken_in() {
    let quota = Arc::new(DiskQuota::new(1_000));
    let mut m = Mempool::new(small()).with_disk_quota(quota.clone());
    let t = Instant::now();
    m.submit(b"a".to_vec(), t, never).expect("within the quota");
    quota.set_used(1_001);
    let err = m.submit(b"b".to_vec(), t, never).expect_err("over");
    assert_eq!(
        err,
        MempoolError::DiskFull {
            used: 1_001,
            max: 1_000
        }
    );
    assert!(err.to_string().contains("storage.max_disk_bytes"), "{err}");
    let b = SealedBatch::from_txs(&[b"c".to_vec()]);
    assert_eq!(
        m.add_remote_from(&b, Address([1; 20]), 4),
        Err(BatchRefusal::DiskFull)
    );
    quota.set_used(10);
    m.submit(b"b".to_vec(), t, never)
        .expect("pruned back under");
}

#[test]
fn payload_is_bounded_by_bytes() {
    let mut cfg = small();
    cfg.max_block_bytes = 250;
    let mut m = Mempool::new(cfg);
    let big = |c: u8| SealedBatch::from_txs(&[vec![c; 100], vec![c; 99]]);
    let (a, b, c) = (big(1), big(2), big(3));
    for x in [&a, &b, &c] {
        assert!(add(&mut m, x));
    }
    let none = HashSet::new();
    assert!(a.encoded.len() > 125, "each batch is over half the bound");
    assert_eq!(m.payload(10, &none), vec![a.digest], "one batch per block");
    let mut tiny = small();
    tiny.max_block_bytes = 1;
    let mut m = Mempool::new(tiny);
    assert!(add(&mut m, &a));
    assert_eq!(
        m.payload(10, &none),
        vec![a.digest],
        "a batch over the bound still goes alone"
    );
}

#[test]
fn senders_take_turns_in_a_block() {
    let mut cfg = small();
    cfg.max_batches = 100;
    cfg.max_block_txs = 4;
    let mut m = Mempool::new(cfg);
    let (flooder, honest) = (Address([1; 20]), Address([2; 20]));
    let batch = |i: u8| SealedBatch::from_txs(&[vec![i]]);
    let flood: Vec<SealedBatch> = (0..10).map(batch).collect();
    for b in &flood {
        m.add_remote_from(b, flooder, 1).expect("flood batch");
    }
    let h1 = batch(100);
    let h2 = batch(101);
    m.add_remote_from(&h1, honest, 1).expect("honest batch");
    m.add_remote_from(&h2, honest, 1).expect("honest batch");
    let none = HashSet::new();
    assert_eq!(
        m.payload(4, &none),
        vec![flood[0].digest, h1.digest, flood[1].digest, h2.digest],
        "the honest sender's batches are not behind the whole flood"
    );
    assert_eq!(
        m.payload(3, &none),
        vec![flood[0].digest, h1.digest, flood[1].digest],
        "the count bound holds across turns"
    );
}
