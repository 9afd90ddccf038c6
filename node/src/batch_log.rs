//! Batches on disk as an append-only log of segment files, indexed in memory.
//!
//! Every node stores every batch it receives (hundreds of kilobytes each, tens of megabytes a
//! second under load) and reads each back once, at execution. In a B-tree database each batch
//! was copied into freshly allocated pages, checksummed and written out again at every commit:
//! at n = 16 on one machine that was about a third of a node's CPU. Here a batch costs one
//! `write` into the OS page cache. Values are immutable and named by their digest, so the log
//! needs no updates, no compaction and no ordering beyond "appended before synced".
//!
//! Layout: `<dir>/seg-NNNNNNNN.log`, each a sequence of records `len: u32 BE ‖ key: [u8; 32] ‖
//! check: [u8; 8] ‖ value` where `check` is the first 8 bytes of BLAKE3(value). A segment is
//! synced before the next one is started, so after a crash only the newest segment can end in a
//! record that never reached the disk: opening checks that segment's records and cuts the file
//! at the first one that is incomplete or fails its check. An older segment that does not parse
//! is corruption and refuses to open.
//!
//! Durability: [`BatchLog::append`] does not sync; [`BatchLog::sync`] makes everything appended
//! before it durable (the store calls it before every durable commit).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A segment grows to about this size before the next one starts.
pub const SEGMENT_BYTES: u64 = 256 << 20;

/// The largest value a record may hold (far above any batch limit; a guard against a torn or
/// foreign length field making the reader allocate gigabytes).
pub const MAX_VALUE_BYTES: u32 = 64 << 20;

const HEADER: usize = 4 + 32 + 8;

/// Why a batch-log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchLogError {
    /// A file or the directory could not be created, read, written or synced.
    #[error("batch log {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A synced segment does not parse: the disk or another program changed it.
    #[error("batch log segment {path} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where its first bad record starts.
        offset: u64,
        /// What is wrong there.
        detail: String,
    },
    /// A value above [`MAX_VALUE_BYTES`] was offered.
    #[error("a value of {0} bytes exceeds the batch log's limit of {MAX_VALUE_BYTES}")]
    TooLarge(usize),
}

#[derive(Clone, Copy, Debug)]
struct Location {
    segment: usize,
    /// Where the value (after the header) starts.
    offset: u64,
    len: u32,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
}

struct Inner {
    index: HashMap<[u8; 32], Location>,
    segments: Vec<Segment>,
    /// The length of the newest segment (where the next record goes).
    end: u64,
    /// Whether something was appended since the last sync.
    dirty: bool,
}

/// The append-only batch store of one data directory. Shared by reference; appends serialize on
/// an internal lock, reads only take it to look up where a value is.
pub struct BatchLog {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for BatchLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchLog").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BatchLogError + '_ {
    move |source| BatchLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(n: usize) -> String {
    format!("seg-{n:08}.log")
}

fn check_of(value: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(value).as_bytes()[..8]);
    c
}

/// One record header read back, or why the record is not whole.
enum Scan {
    Record { key: [u8; 32], len: u32 },
    End,
    Bad(String),
}

fn read_header(file: &File, offset: u64, size: u64) -> std::io::Result<(Scan, [u8; 8])> {
    if offset == size {
        return Ok((Scan::End, [0; 8]));
    }
    if size - offset < HEADER as u64 {
        return Ok((Scan::Bad("a header cut short".into()), [0; 8]));
    }
    let mut h = [0u8; HEADER];
    file.read_exact_at(&mut h, offset)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&h[4..36]);
    let mut check = [0u8; 8];
    check.copy_from_slice(&h[36..44]);
    if len > MAX_VALUE_BYTES {
        return Ok((Scan::Bad(format!("a length of {len} bytes")), check));
    }
    if size - offset - (HEADER as u64) < u64::from(len) {
        return Ok((Scan::Bad("a value cut short".into()), check));
    }
    Ok((Scan::Record { key, len }, check))
}

impl BatchLog {
    /// Opens (or creates) the log in `dir`, reading every segment's record headers into the
    /// index and checking the newest segment's values (cutting a torn tail off).
    pub fn open(dir: &Path) -> Result<Self, BatchLogError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`BatchLog::open`] with segments of `segment_bytes` (tests use small ones).
    fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, BatchLogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("seg-"))
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            numbers.push(n);
        }
        numbers.sort_unstable();
        if numbers.iter().enumerate().any(|(i, &n)| i != n) {
            return Err(BatchLogError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                detail: format!("segment numbers {numbers:?} are not 0, 1, 2, ..."),
            });
        }
        let mut inner = Inner {
            index: HashMap::new(),
            segments: Vec::new(),
            end: 0,
            dirty: false,
        };
        let last = numbers.len().checked_sub(1);
        for n in numbers {
            let path = dir.join(segment_name(n));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let end = Self::scan(&file, &path, n, Some(n) == last, &mut inner.index)?;
            inner.end = end;
            inner.segments.push(Segment {
                path,
                file: Arc::new(file),
            });
        }
        let log = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(inner),
        };
        if last.is_none() {
            let mut inner = log.lock();
            log.start_segment(&mut inner)?;
        }
        Ok(log)
    }

    /// Indexes one segment; returns where its records end. The newest segment's values are
    /// checked and a bad tail is cut off; any other segment must parse to its end.
    fn scan(
        file: &File,
        path: &Path,
        segment: usize,
        newest: bool,
        index: &mut HashMap<[u8; 32], Location>,
    ) -> Result<u64, BatchLogError> {
        let size = file.metadata().map_err(io_err(path))?.len();
        let mut offset = 0u64;
        let mut value = Vec::new();
        loop {
            let (scan, check) = read_header(file, offset, size).map_err(io_err(path))?;
            let bad = match scan {
                Scan::End => return Ok(offset),
                Scan::Bad(detail) => detail,
                Scan::Record { key, len } => {
                    let at = offset + HEADER as u64;
                    let good = if newest {
                        value.resize(len as usize, 0);
                        file.read_exact_at(&mut value, at).map_err(io_err(path))?;
                        check_of(&value) == check
                    } else {
                        true
                    };
                    if good {
                        index.insert(
                            key,
                            Location {
                                segment,
                                offset: at,
                                len,
                            },
                        );
                        offset = at + u64::from(len);
                        continue;
                    }
                    "a value that fails its check".to_owned()
                }
            };
            if !newest {
                return Err(BatchLogError::Corrupt {
                    path: path.to_path_buf(),
                    offset,
                    detail: bad,
                });
            }
            tracing::warn!(
                path = %path.display(),
                offset,
                cut = size - offset,
                reason = %bad,
                "batch log ends in an incomplete record (a crash while writing): cut off"
            );
            file.set_len(offset).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
            return Ok(offset);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Syncs the newest segment (if written) and starts the next one, durably named.
    fn start_segment(&self, inner: &mut Inner) -> Result<(), BatchLogError> {
        if let Some(s) = inner.segments.last() {
            s.file.sync_data().map_err(io_err(&s.path))?;
        }
        let path = self.dir.join(segment_name(inner.segments.len()));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        inner.segments.push(Segment {
            path,
            file: Arc::new(file),
        });
        inner.end = 0;
        inner.dirty = false;
        Ok(())
    }

    /// Appends `value` under `key` unless the key is already stored. Not durable until the next
    /// [`BatchLog::sync`]; visible to reads at once.
    pub fn append(&self, key: &[u8; 32], value: &[u8]) -> Result<(), BatchLogError> {
        let len = u32::try_from(value.len())
            .ok()
            .filter(|&l| l <= MAX_VALUE_BYTES)
            .ok_or(BatchLogError::TooLarge(value.len()))?;
        let mut inner = self.lock();
        if inner.index.contains_key(key) {
            return Ok(());
        }
        let record = (HEADER + value.len()) as u64;
        if inner.end > 0 && inner.end + record > self.segment_bytes {
            self.start_segment(&mut inner)?;
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..36].copy_from_slice(key);
        header[36..].copy_from_slice(&check_of(value));
        let segment = inner.segments.len() - 1;
        let (path, file) = {
            let s = &inner.segments[segment];
            (s.path.clone(), s.file.clone())
        };
        let start = inner.end;
        let written = (&*file)
            .write_all(&header)
            .and_then(|()| (&*file).write_all(value));
        if let Err(source) = written {
            // Never leave half a record where the next one would go.
            let _ = file.set_len(start);
            return Err(BatchLogError::Io { path, source });
        }
        inner.end = start + record;
        inner.dirty = true;
        inner.index.insert(
            *key,
            Location {
                segment,
                offset: start + HEADER as u64,
                len,
            },
        );
        Ok(())
    }

    /// Makes everything appended before this call durable.
    pub fn sync(&self) -> Result<(), BatchLogError> {
        let (path, file) = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let Some(s) = inner.segments.last() else {
                return Ok(());
            };
            (s.path.clone(), s.file.clone())
        };
        file.sync_data().map_err(io_err(&path))
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.lock().index.contains_key(key)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, BatchLogError> {
        let (loc, path, file) = {
            let inner = self.lock();
            let Some(loc) = inner.index.get(key).copied() else {
                return Ok(None);
            };
            let s = &inner.segments[loc.segment];
            (loc, s.path.clone(), s.file.clone())
        };
        let mut value = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut value, loc.offset)
            .map_err(io_err(&path))?;
        Ok(Some(value))
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn values_survive_a_reopen_and_duplicates_are_stored_once() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let log = BatchLog::open(dir.path()).expect("open");
            log.append(&key(1), b"one").expect("append");
            log.append(&key(2), b"").expect("append empty");
            log.append(&key(1), b"other").expect("append again");
            assert_eq!(log.get(&key(1)).expect("get"), Some(b"one".to_vec()));
            assert_eq!(log.get(&key(3)).expect("get"), None);
            log.sync().expect("sync");
        }
        let log = BatchLog::open(dir.path()).expect("reopen");
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
            let log = BatchLog::open(dir.path()).expect("open");
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
            let log = BatchLog::open(dir.path()).expect("reopen");
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
        let log = BatchLog::open(dir.path()).expect("reopen again");
        assert_eq!(log.len(), 1, "the damaged last record is dropped");
        assert!(log.contains(&key(1)) && !log.contains(&key(3)));
    }

    #[test]
    fn an_older_segment_that_does_not_parse_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let log = BatchLog::open(dir.path()).expect("open");
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
        let err = BatchLog::open(dir.path()).expect_err("corrupt");
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
            let log = BatchLog::open_with(dir.path(), 10 * (HEADER as u64 + 1000)).expect("open");
            for i in 0..n {
                log.append(&key(i), &value).expect("append");
            }
            log.sync().expect("sync");
            assert_eq!(log.lock().segments.len(), 3);
        }
        let log = BatchLog::open_with(dir.path(), 10 * (HEADER as u64 + 1000)).expect("reopen");
        assert_eq!(log.len(), usize::from(n));
        assert_eq!(log.get(&key(0)).expect("first"), Some(value.clone()));
        assert_eq!(log.get(&key(n - 1)).expect("last"), Some(value));
    }

    #[test]
    fn a_value_above_the_limit_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = BatchLog::open(dir.path()).expect("open");
        let big = vec![0u8; MAX_VALUE_BYTES as usize + 1];
        let err = log.append(&key(1), &big).expect_err("too large");
        assert!(matches!(err, BatchLogError::TooLarge(_)), "{err}");
        assert!(log.is_empty());
    }
}
