//! Batches on disk as an append-only log of segment files, indexed in memory.
//!
//! Every node stores every batch it receives (hundreds of kilobytes each, tens of megabytes a
//! second under load) and reads each back once, at execution. In a B-tree database each batch
//! was copied into freshly allocated pages, checksummed and written out again at every commit:
//! at n = 16 on one machine that was about a third of a node's CPU. Here a batch costs one
//! `write` into the OS page cache. Values are immutable and named by their digest, so the log
//! needs no updates and no ordering beyond "appended before synced".
//!
//! Space comes back by segments ([`BatchLog::compact`]): each value carries, in memory, the
//! highest committed height that references it and the committed height when it was appended.
//! Below a retention horizon a value is dead when every block referencing it is below the horizon,
//! or when nothing references it and it was appended below the horizon (a batch that was never
//! committed in all that time), unless the caller pins it (the mempool holds it, an uncommitted
//! block names it). A segment whose values are dead is deleted; one that is mostly dead has its
//! live values copied into the newest segment (synced) first. The index forgets what was deleted.
//! After a restart nothing says when a value was appended, so every value counts as appended at
//! the committed height of the open: unreferenced values wait one more horizon, never less.
//!
//! Layout: `<dir>/seg-NNNNNNNN.log`, each a sequence of records `len: u32 BE ‖ key: [u8; 32] ‖
//! check: [u8; 8] ‖ value` where `check` is the first 8 bytes of BLAKE3(value). A segment is
//! synced before the next one is started, so after a crash only the newest segment can end in a
//! record that never reached the disk: opening checks that segment's records and cuts the file
//! at the first one that is incomplete or fails its check. An older segment that does not parse
//! is corruption and refuses to open. Segment numbers only grow; compaction leaves gaps. A
//! segment is unlinked only after the copies of its live values are synced, so a crash in the
//! middle of a compaction leaves a value in both places (the newer copy wins at open) or in its
//! old place, never in neither.
//!
//! Durability: [`BatchLog::append`] does not sync; [`BatchLog::sync`] makes everything appended
//! before it durable (the store calls it before every durable commit).

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The segment's number.
    segment: u64,
    /// Where the value (after the header) starts.
    offset: u64,
    len: u32,
    /// The highest committed height whose block references the value (0: none known).
    last_ref: u64,
    /// The committed height when the value was appended (at open: the height then).
    appended_at: u64,
    /// The append counter when the value was last offered (appended or offered again).
    touched: u64,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of records in the file.
    bytes: u64,
    /// The keys appended to this segment, in order (some may have moved on since).
    keys: Vec<[u8; 32]>,
}

struct Inner {
    index: HashMap<[u8; 32], Location>,
    /// By number, oldest first; the last one is the one appended to.
    segments: BTreeMap<u64, Segment>,
    /// The length of the newest segment (where the next record goes).
    end: u64,
    /// Whether something was appended since the last sync.
    dirty: bool,
    /// The committed height new values are stamped with.
    height: u64,
    /// Counts appends (and offers of stored keys), to see what changed during a compaction.
    touches: u64,
}

impl Inner {
    fn newest(&self) -> Option<(u64, &Segment)> {
        self.segments.iter().next_back().map(|(n, s)| (*n, s))
    }
}

/// What one [`BatchLog::compact`] pass freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Segments deleted.
    pub segments: u64,
    /// Values deleted.
    pub values: u64,
    /// Live values copied into the newest segment first.
    pub moved: u64,
    /// Bytes of segment files deleted.
    pub bytes: u64,
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

fn segment_name(n: u64) -> String {
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
    /// `height` is the committed height now: every value found counts as appended then.
    pub fn open(dir: &Path, height: u64) -> Result<Self, BatchLogError> {
        Self::open_with(dir, SEGMENT_BYTES, height)
    }

    /// [`BatchLog::open`] with segments of `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64, height: u64) -> Result<Self, BatchLogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("seg-"))
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            numbers.push(n);
        }
        numbers.sort_unstable();
        let mut inner = Inner {
            index: HashMap::new(),
            segments: BTreeMap::new(),
            end: 0,
            dirty: false,
            height,
            touches: 0,
        };
        let last = numbers.last().copied();
        for n in numbers {
            let path = dir.join(segment_name(n));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let mut keys = Vec::new();
            let end = Self::scan(&file, &path, Some(n) == last, &mut keys)?;
            for (key, offset, len) in &keys {
                // A value in two segments (a crash during a compaction): the newer copy wins.
                inner.index.insert(
                    *key,
                    Location {
                        segment: n,
                        offset: *offset,
                        len: *len,
                        last_ref: 0,
                        appended_at: height,
                        touched: 0,
                    },
                );
            }
            inner.end = end;
            inner.segments.insert(
                n,
                Segment {
                    path,
                    file: Arc::new(file),
                    bytes: end,
                    keys: keys.into_iter().map(|(k, _, _)| k).collect(),
                },
            );
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

    /// Lists one segment's records (key, value offset, length); returns where they end. The
    /// newest segment's values are checked and a bad tail is cut off; any other segment must
    /// parse to its end.
    fn scan(
        file: &File,
        path: &Path,
        newest: bool,
        records: &mut Vec<([u8; 32], u64, u32)>,
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
                        records.push((key, at, len));
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
        let number = match inner.newest() {
            Some((n, s)) => {
                s.file.sync_data().map_err(io_err(&s.path))?;
                n + 1
            }
            None => 0,
        };
        let path = self.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.sync_dir()?;
        inner.segments.insert(
            number,
            Segment {
                path,
                file: Arc::new(file),
                bytes: 0,
                keys: Vec::new(),
            },
        );
        inner.end = 0;
        inner.dirty = false;
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), BatchLogError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Appends `value` under `key` unless the key is already stored. Not durable until the next
    /// [`BatchLog::sync`]; visible to reads at once.
    pub fn append(&self, key: &[u8; 32], value: &[u8]) -> Result<(), BatchLogError> {
        let len = u32::try_from(value.len())
            .ok()
            .filter(|&l| l <= MAX_VALUE_BYTES)
            .ok_or(BatchLogError::TooLarge(value.len()))?;
        let mut inner = self.lock();
        inner.touches += 1;
        let touches = inner.touches;
        if let Some(loc) = inner.index.get_mut(key) {
            // Offered again: whatever compaction decided about it before this is stale.
            loc.touched = touches;
            return Ok(());
        }
        let height = inner.height;
        let loc = self.write_record(&mut inner, key, value, len)?;
        inner.index.insert(
            *key,
            Location {
                last_ref: 0,
                appended_at: height,
                touched: touches,
                ..loc
            },
        );
        Ok(())
    }

    /// Writes one record at the end of the newest segment (starting the next one when full);
    /// returns where its value is.
    fn write_record(
        &self,
        inner: &mut Inner,
        key: &[u8; 32],
        value: &[u8],
        len: u32,
    ) -> Result<Location, BatchLogError> {
        let record = (HEADER + value.len()) as u64;
        if inner.end > 0 && inner.end + record > self.segment_bytes {
            self.start_segment(inner)?;
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..36].copy_from_slice(key);
        header[36..].copy_from_slice(&check_of(value));
        let start = inner.end;
        let Some((segment, s)) = inner.segments.iter_mut().next_back() else {
            return Err(BatchLogError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no segment to append to"),
            });
        };
        let segment = *segment;
        let written = (&*s.file)
            .write_all(&header)
            .and_then(|()| (&*s.file).write_all(value));
        if let Err(source) = written {
            // Never leave half a record where the next one would go.
            let _ = s.file.set_len(start);
            return Err(BatchLogError::Io {
                path: s.path.clone(),
                source,
            });
        }
        s.bytes = start + record;
        s.keys.push(*key);
        inner.end = start + record;
        inner.dirty = true;
        Ok(Location {
            segment,
            offset: start + HEADER as u64,
            len,
            last_ref: 0,
            appended_at: 0,
            touched: 0,
        })
    }

    /// Makes everything appended before this call durable.
    pub fn sync(&self) -> Result<(), BatchLogError> {
        let (path, file) = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let Some((_, s)) = inner.newest() else {
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
            let Some(s) = inner.segments.get(&loc.segment) else {
                return Ok(None);
            };
            (loc, s.path.clone(), s.file.clone())
        };
        // An unlinked segment stays readable through its open file.
        let mut value = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut value, loc.offset)
            .map_err(io_err(&path))?;
        Ok(Some(value))
    }

    /// The committed height new values are stamped with (their age, for compaction).
    pub fn set_height(&self, height: u64) {
        let mut inner = self.lock();
        inner.height = inner.height.max(height);
    }

    /// Records that the block committed at `height` references these values.
    pub fn mark_committed(&self, keys: &[[u8; 32]], height: u64) {
        let mut inner = self.lock();
        for k in keys {
            if let Some(loc) = inner.index.get_mut(k) {
                loc.last_ref = loc.last_ref.max(height);
            }
        }
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.lock().segments.values().map(|s| s.bytes).sum()
    }

    /// The append counter: read it before taking the snapshot of pinned values that
    /// [`BatchLog::compact`] is given, so that anything offered after it is kept.
    pub fn touches(&self) -> u64 {
        self.lock().touches
    }

    /// Deletes the values dead below `horizon` (see the module documentation) that `pinned`
    /// does not name and nobody offered after `since` ([`BatchLog::touches`] before `pinned`
    /// was taken), segment by segment, oldest first, never the newest segment. A segment whose
    /// live values take at most a quarter of it has them copied forward (and synced) before it
    /// is deleted; one with more live data waits. Runs beside appends and reads (it holds the
    /// lock only to look and to switch), one call at a time.
    pub fn compact(
        &self,
        horizon: u64,
        pinned: &HashSet<[u8; 32]>,
        since: u64,
    ) -> Result<Compaction, BatchLogError> {
        let mut done = Compaction::default();
        let start = since;
        let candidates: Vec<u64> = {
            let inner = self.lock();
            let newest = inner.newest().map(|(n, _)| n);
            inner
                .segments
                .keys()
                .copied()
                .filter(|n| Some(*n) != newest)
                .collect()
        };
        for number in candidates {
            let (live, dead, size) = {
                let inner = self.lock();
                let Some(seg) = inner.segments.get(&number) else {
                    continue;
                };
                let mut live = Vec::new();
                let mut dead = Vec::new();
                for k in &seg.keys {
                    let Some(loc) = inner.index.get(k).filter(|l| l.segment == number) else {
                        continue;
                    };
                    let gone = if loc.last_ref > 0 {
                        loc.last_ref < horizon
                    } else {
                        loc.appended_at < horizon
                    };
                    if gone && !pinned.contains(k) && loc.touched <= start {
                        dead.push(*k);
                    } else {
                        live.push((*k, *loc));
                    }
                }
                (live, dead, seg.bytes)
            };
            let live_bytes: u64 = live
                .iter()
                .map(|(_, l)| HEADER as u64 + u64::from(l.len))
                .sum();
            if live_bytes.saturating_mul(4) > size {
                continue;
            }
            for (k, _) in &live {
                self.move_forward(k, number)?;
            }
            self.sync_newest()?;
            let mut inner = self.lock();
            // Offered again while the copies were made: keep the segment for the next pass.
            if dead
                .iter()
                .any(|k| inner.index.get(k).is_some_and(|l| l.touched > start))
            {
                continue;
            }
            if inner.newest().map(|(n, _)| n) == Some(number) {
                continue;
            }
            let Some(seg) = inner.segments.remove(&number) else {
                continue;
            };
            for k in &dead {
                if inner.index.get(k).is_some_and(|l| l.segment == number) {
                    inner.index.remove(k);
                    done.values += 1;
                }
            }
            let len = inner.index.len();
            inner.index.shrink_to(len * 2);
            drop(inner);
            std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            done.segments += 1;
            done.moved += live.len() as u64;
            done.bytes += seg.bytes;
        }
        if done.segments > 0 {
            self.sync_dir()?;
        }
        Ok(done)
    }

    /// Copies a live value out of segment `from` into the newest segment, keeping its marks.
    fn move_forward(&self, key: &[u8; 32], from: u64) -> Result<(), BatchLogError> {
        let Some(value) = self.get(key)? else {
            return Ok(());
        };
        let mut inner = self.lock();
        let Some(old) = inner.index.get(key).copied().filter(|l| l.segment == from) else {
            return Ok(());
        };
        let loc = self.write_record(&mut inner, key, &value, old.len)?;
        inner.index.insert(
            *key,
            Location {
                last_ref: old.last_ref,
                appended_at: old.appended_at,
                touched: old.touched,
                ..loc
            },
        );
        Ok(())
    }

    /// Syncs the newest segment whether or not the store asked for it.
    fn sync_newest(&self) -> Result<(), BatchLogError> {
        let (path, file) = {
            let inner = self.lock();
            let Some((_, s)) = inner.newest() else {
                return Ok(());
            };
            (s.path.clone(), s.file.clone())
        };
        file.sync_data().map_err(io_err(&path))
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
mod tests;
