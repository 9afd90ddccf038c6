use super::*;

fn key(i: u8) -> [u8; 32] {
    [i; 32]
}

#[test]
fn values_survive_a_reopen_and_duplicates_are_stored_once() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let log = BatchLog::open(dir.path(), 0).expect("open");
        log.append(&key(1), b"one").expect("append");
        log.append(&key(2), b"").expect("append empty");
        log.append(&key(1), b"other").expect("append again");
        assert_eq!(log.get(&key(1)).expect("get"), Some(b"one".to_vec()));
        assert_eq!(log.get(&key(3)).expect("get"), None);
        log.sync().expect("sync");
    }
    let log = BatchLog::open(dir.path(), 0).expect("reopen");
    assert_eq!(log.len(), 2);
    assert_eq!(log.get(&key(1)).expect("get"), Some(b"one".to_vec()));
    assert_eq!(log.get(&key(2)).expect("get"), Some(Vec::new()));
    assert!(log.contains(&key(2)) && !log.contains(&key(3)));
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_goes_on_after_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let seg = dir.path().join(segment_name(0));
    {
        let log = BatchLog::open(dir.path(), 0).expect("open");
        log.append(&key(1), &[7u8; 1000]).expect("append");
        log.append(&key(2), &[8u8; 1000]).expect("append");
        log.sync().expect("sync");
    }
    let whole = std::fs::metadata(&seg).expect("meta").len();
    // A crash in the middle of the second record's value.
    let f = OpenOptions::new().write(true).open(&seg).expect("seg");
    f.set_len(whole - 10).expect("cut");
    drop(f);
    {
        let log = BatchLog::open(dir.path(), 0).expect("reopen");
        assert_eq!(log.len(), 1);
        assert_eq!(log.get(&key(1)).expect("get"), Some(vec![7u8; 1000]));
        assert!(!log.contains(&key(2)));
        log.append(&key(3), b"three").expect("append after the cut");
        log.sync().expect("sync");
    }
    // A record whose bytes changed (written, never synced, garbage after power loss).
    let mut bytes = std::fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let log = BatchLog::open(dir.path(), 0).expect("reopen again");
    assert_eq!(log.len(), 1, "the damaged last record is dropped");
    assert!(log.contains(&key(1)) && !log.contains(&key(3)));
}

#[test]
fn an_older_segment_that_does_not_parse_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let log = BatchLog::open(dir.path(), 0).expect("open");
        log.append(&key(1), b"one").expect("append");
        let mut inner = log.lock();
        log.start_segment(&mut inner).expect("next segment");
        drop(inner);
        log.append(&key(2), b"two").expect("append");
        log.sync().expect("sync");
    }
    let first = dir.path().join(segment_name(0));
    let f = OpenOptions::new().write(true).open(&first).expect("seg");
    f.set_len(HEADER as u64 + 1).expect("cut");
    drop(f);
    let err = BatchLog::open(dir.path(), 0).expect_err("corrupt");
    assert!(
        matches!(&err, BatchLogError::Corrupt { path, .. } if *path == first),
        "{err}"
    );
    assert!(err.to_string().contains("seg-00000000.log"), "{err}");
}

#[test]
fn segments_roll_and_every_value_stays_readable() {
    let dir = tempfile::tempdir().expect("tmp");
    let value = vec![5u8; 1000];
    let n = 25u8;
    {
        // Ten records per segment.
        let log = BatchLog::open_with(dir.path(), 10 * (HEADER as u64 + 1000), 0).expect("open");
        for i in 0..n {
            log.append(&key(i), &value).expect("append");
        }
        log.sync().expect("sync");
        assert_eq!(log.lock().segments.len(), 3);
    }
    let log = BatchLog::open_with(dir.path(), 10 * (HEADER as u64 + 1000), 0).expect("reopen");
    assert_eq!(log.len(), usize::from(n));
    assert_eq!(log.get(&key(0)).expect("first"), Some(value.clone()));
    assert_eq!(log.get(&key(n - 1)).expect("last"), Some(value));
}

#[test]
fn a_value_above_the_limit_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = BatchLog::open(dir.path(), 0).expect("open");
    let big = vec![0u8; MAX_VALUE_BYTES as usize + 1];
    let err = log.append(&key(1), &big).expect_err("too large");
    assert!(matches!(err, BatchLogError::TooLarge(_)), "{err}");
    assert!(log.is_empty());
}

/// Bytes of one test record of 1,000 bytes.
const RECORD: u64 = HEADER as u64 + 1000;

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

#[test]
fn committed_values_below_the_horizon_go_with_their_segments_and_the_index_shrinks() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = BatchLog::open_with(dir.path(), 10 * RECORD, 0).expect("open");
    // Heights 1..=50, one value each, ten per segment.
    for h in 1..=50u8 {
        log.set_height(u64::from(h));
        log.append(&key(h), &[h; 1000]).expect("append");
        log.mark_committed(&[key(h)], u64::from(h));
    }
    log.sync().expect("sync");
    assert_eq!(log.lock().segments.len(), 5);
    let before = log.bytes();
    let done = log
        .compact(31, &HashSet::new(), log.touches())
        .expect("compact");
    assert_eq!(done.segments, 3, "heights 1..=30 fill three segments");
    assert_eq!(done.values, 30);
    assert_eq!(done.moved, 0);
    assert_eq!(log.len(), 20);
    assert_eq!(log.bytes(), before - 30 * RECORD);
    assert!(!log.contains(&key(30)) && log.contains(&key(31)));
    assert_eq!(log.get(&key(31)).expect("get"), Some(vec![31u8; 1000]));
    assert_eq!(
        seg_files(dir.path()),
        ["seg-00000003.log", "seg-00000004.log"]
    );
    drop(log);
    // Reopens with the gap in the numbering, and appends after the newest.
    let log = BatchLog::open_with(dir.path(), 10 * RECORD, 50).expect("reopen");
    assert_eq!(log.len(), 20);
    for h in 51..=61u8 {
        log.append(&key(h), &[h; 1000]).expect("append");
    }
    assert_eq!(log.get(&key(45)).expect("get"), Some(vec![45u8; 1000]));
    assert!(dir.path().join(segment_name(5)).exists());
}

#[test]
fn pinned_young_and_re_offered_values_survive_by_moving_forward() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = BatchLog::open_with(dir.path(), 10 * RECORD, 0).expect("open");
    // Segment 0: nine values committed at height 1, one never committed (k = 10).
    log.set_height(1);
    for i in 1..=10u8 {
        log.append(&key(i), &[i; 1000]).expect("append");
    }
    let committed: Vec<_> = (1..=9u8).map(key).collect();
    log.mark_committed(&committed, 1);
    // Segment 1 (the newest): a value appended at height 20.
    log.set_height(20);
    log.append(&key(11), &[11; 1000]).expect("append");
    // Below horizon 5 the unreferenced value is old, but the mempool holds it.
    let pinned: HashSet<_> = [key(10)].into_iter().collect();
    let done = log.compact(5, &pinned, log.touches()).expect("compact");
    assert_eq!((done.segments, done.values, done.moved), (1, 9, 1));
    assert_eq!(log.get(&key(10)).expect("get"), Some(vec![10u8; 1000]));
    assert!(!log.contains(&key(1)));
    // The moved value keeps its age: unpinned, it goes with the next segment it is in.
    log.append(&key(10), &[10; 1000])
        .expect("offered again: no second copy");
    assert_eq!(log.len(), 2);
    for i in 12..=30u8 {
        log.append(&key(i), &[i; 1000]).expect("append");
    }
    let done = log
        .compact(21, &HashSet::new(), log.touches())
        .expect("compact");
    assert!(done.segments >= 1, "{done:?}");
    assert!(!log.contains(&key(10)), "old, unreferenced, unpinned");
    assert!(log.contains(&key(30)), "the newest segment stays");
    // Durable and consistent after the moves: everything left reads back after a reopen.
    log.sync().expect("sync");
    let left = log.len();
    drop(log);
    let log = BatchLog::open_with(dir.path(), 10 * RECORD, 30).expect("reopen");
    assert_eq!(log.len(), left);
}

#[test]
fn a_crash_between_the_copies_and_the_unlink_opens_with_both_copies_once() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let log = BatchLog::open_with(dir.path(), 10 * RECORD, 0).expect("open");
        for i in 1..=12u8 {
            log.append(&key(i), &[i; 1000]).expect("append");
        }
        log.sync().expect("sync");
    }
    // What a compaction leaves when it dies after copying key 1 forward (synced), before
    // unlinking segment 0: the value in both segments.
    {
        let log = BatchLog::open_with(dir.path(), 10 * RECORD, 0).expect("open");
        log.move_forward(&key(1), 0).expect("copy");
        log.sync_newest().expect("sync");
    }
    let log = BatchLog::open_with(dir.path(), 10 * RECORD, 0).expect("reopen");
    assert_eq!(log.len(), 12);
    let loc = log.lock().index.get(&key(1)).copied().expect("indexed");
    assert_eq!(loc.segment, 1, "the newer copy wins");
    assert_eq!(log.get(&key(1)).expect("get"), Some(vec![1u8; 1000]));
    // The next pass deletes segment 0 and keeps every live value.
    let pinned: HashSet<_> = (1..=12u8).map(key).collect();
    let done = log
        .compact(u64::MAX, &pinned, log.touches())
        .expect("compact");
    assert_eq!(
        done.segments, 0,
        "nine live values of ten: not worth moving yet"
    );
    let done = log
        .compact(u64::MAX, &HashSet::new(), log.touches())
        .expect("compact");
    assert_eq!(done.segments, 1);
    assert_eq!(
        log.len(),
        3,
        "keys 1 (moved), 11 and 12 are in the newest segment"
    );
}
