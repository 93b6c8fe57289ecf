//! The erasure journal: `<keys-dir>/erasures.journal`, one line per key destruction.
//!
//! Crypto-shredding promises that no copy of a forgotten subject's data can be read again, yet
//! either database can be restored from a backup taken before a forget: a restored vault holds
//! the destroyed keys again, a restored event database shows the shredded streams active. The
//! journal lives in the keys directory, which is never restored, so it outlives both: every
//! erasure appends its destruction here — fsynced — *before* the vault destroys anything, and
//! `EventStore::open` replays it (`services::erasure`), destroying again what a restored vault
//! holds and recording again what a restored event database lacks.
//!
//! The format (SECURITY.md, "The erasure journal"): one JSON object per line, its members in the
//! order of their names, no whitespace:
//! `{"at","hash","keys","part","parts","prev","request_id","seq","stream"?,"streams","subject"?,"target"}`.
//! `hash` = hex SHA-256 over the previous line's hash (32 raw bytes; 32 zero bytes before the
//! first line) followed by the line's *canonical content*: the same object without `prev` and
//! `hash`, serialized the same way. `prev` is the previous line's `hash`. Opening verifies the
//! whole chain and stops, naming the line, at the first line that does not parse, is not in that
//! form, or breaks the chain; only a last line without its newline — an append that never
//! completed, so the vault was never called for it — is cut off, with a warning.
//!
//! Several processes may share one keys directory: every append reads what others appended
//! since (verifying it) and writes under an exclusive `flock` of the file, and within a process
//! under a mutex that only blocking threads take: what async code asks of the journal (requests
//! known journaled, the verified length) never waits for another process's lock or an fsync.
//! The file is created `0600`.
//!
//! Architecture invariant: ids only — request ids, subject ids, stream names, key ids and a time;
//! never key bytes, event data, reasons or who asked. It names the model, the errors and the
//! limits only (neither storage nor crypto), and file I/O runs on Tokio's blocking threads.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use lethe_keyvault::KeyId;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::JournalError;
use crate::limits::{JOURNAL_ENTRY_KEYS_MAX, JOURNAL_LINE_BYTES_MAX, JOURNAL_RECENT_REQUESTS_MAX};
use crate::model::{Erasure, ErasureTarget, StreamName, SubjectId};

/// A line of the journal as read back, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalEntry {
    /// Its line number (1-based), which is also its `seq`.
    pub(crate) line: u64,
    /// When the destruction was journaled (just before the vault was asked).
    pub(crate) at: DateTime<Utc>,
    pub(crate) request_id: Uuid,
    pub(crate) target: ErasureTarget,
    /// The streams shredded (this part's share).
    pub(crate) streams: Vec<StreamName>,
    /// The keys destroyed: the streams' keys and, in a subject's first part, its subject key.
    pub(crate) keys: Vec<KeyId>,
    /// Whether this is the request's last line (`part == parts`): its destruction is journaled
    /// whole.
    pub(crate) last_part: bool,
}

/// A line as stored. Members in the order of their names: serde writes them in declaration
/// order, so serializing a line gives its canonical form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    at: String,
    hash: String,
    keys: Vec<Uuid>,
    part: u32,
    parts: u32,
    prev: String,
    request_id: Uuid,
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    streams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    target: String,
}

/// What a line's hash covers: the line without `prev` and `hash`, members in the same order.
#[derive(Serialize)]
struct Content<'a> {
    at: &'a str,
    keys: &'a [Uuid],
    part: u32,
    parts: u32,
    request_id: Uuid,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    streams: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    target: &'a str,
}

impl Line {
    fn content(&self) -> Content<'_> {
        Content {
            at: &self.at,
            keys: &self.keys,
            part: self.part,
            parts: self.parts,
            request_id: self.request_id,
            seq: self.seq,
            stream: self.stream.as_deref(),
            streams: &self.streams,
            subject: self.subject.as_deref(),
            target: &self.target,
        }
    }
}

/// `SHA-256(prev ‖ canonical content)`.
fn chain_hash(prev: &[u8; 32], content: &Content<'_>) -> Result<[u8; 32], serde_json::Error> {
    let canonical = serde_json::to_vec(content)?;
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(&canonical);
    Ok(hasher.finalize().into())
}

/// Where the verified part of the file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    /// The last verified line's `seq` (0: none).
    seq: u64,
    /// The last verified line's hash (zeros: none).
    head: [u8; 32],
    /// Bytes verified: always the end of a whole line.
    len: u64,
}

impl Chain {
    const START: Chain = Chain {
        seq: 0,
        head: [0; 32],
        len: 0,
    };
}

/// The erasure journal of one store (shared by its clones).
pub(crate) struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The file and the chain verified so far. Locked only on blocking threads (`record`), and
    /// held while the file's `flock` is awaited and the append is fsynced.
    appender: Mutex<Appender>,
    /// Requests known to be journaled whole (bounded, least recently seen dropped first). Never
    /// held across I/O: async code reads and updates it.
    recent: Mutex<LruCache<Uuid, ()>>,
    /// The length of the chain verified so far (`Appender::chain.len`), for `reader`.
    verified_len: AtomicU64,
}

struct Appender {
    /// Opened for reading and appending (every write goes to the end, whoever wrote last).
    file: File,
    chain: Chain,
}

impl Journal {
    /// Opens the journal (creating it `0600` if it does not exist; its directory must) and
    /// verifies the whole chain. A torn last line is cut off with a warning; any other broken
    /// line fails the opening with its line number.
    pub(crate) async fn open(path: PathBuf) -> Result<Journal, JournalError> {
        let inner = blocking(move || Inner::open(path)).await?;
        Ok(Journal { inner: Arc::new(inner) })
    }

    /// Appends the destruction `erasure` is about to carry out (its recorded lists) and fsyncs
    /// it; returns false if the request was journaled already (by this or another process).
    /// `rerun`: the request's lists were recorded before this step ran, so it may have been
    /// journaled before this process started; the file is then searched for it.
    pub(crate) async fn record(&self, erasure: &Erasure, rerun: bool) -> Result<bool, JournalError> {
        let destruction = Destruction::of(erasure);
        let inner = self.inner.clone();
        blocking(move || inner.record(&destruction, rerun)).await
    }

    /// Marks requests as journaled whole (the replay read them), so that driving them again
    /// does not append them twice.
    pub(crate) fn remember(&self, request_ids: impl IntoIterator<Item = Uuid>) {
        self.inner.remember(request_ids);
    }

    /// A reader of the lines verified so far, from the first, for the replay. Lines appended
    /// later (by this or another process) are not part of it: they were carried out already.
    pub(crate) fn reader(&self) -> JournalReader {
        let end = self.inner.verified_len.load(Ordering::Acquire);
        JournalReader {
            path: self.inner.path.clone(),
            end,
            chain: Chain::START,
        }
    }
}

/// Reads the journal in batches, verifying the chain again as it goes (the file may have
/// changed since it was opened).
pub(crate) struct JournalReader {
    path: PathBuf,
    end: u64,
    chain: Chain,
}

impl JournalReader {
    /// The next entries: about `max` of them, never ending inside a request's parts (so every
    /// request of a batch is whole unless its last line never made it to the file). Empty at
    /// the end.
    pub(crate) async fn next_batch(&mut self, max: usize) -> Result<Vec<JournalEntry>, JournalError> {
        if self.chain.len >= self.end {
            return Ok(Vec::new());
        }
        let (path, chain, end) = (self.path.clone(), self.chain, self.end);
        let (entries, chain) = blocking(move || {
            let mut file = File::open(&path).map_err(|e| io_error(&path, e))?;
            file.seek(SeekFrom::Start(chain.len)).map_err(|e| io_error(&path, e))?;
            let mut reader = ChainReader::new(&path, BufReader::new(file), chain, Some(end));
            let mut entries = Vec::new();
            loop {
                let open_request = entries.last().is_some_and(|e: &JournalEntry| !e.last_part);
                if entries.len() >= max && !open_request {
                    break;
                }
                match reader.step()? {
                    Step::Entry(entry) => entries.push(entry),
                    Step::End | Step::Torn => break,
                }
            }
            Ok((entries, reader.chain))
        })
        .await?;
        self.chain = chain;
        Ok(entries)
    }
}

impl Inner {
    fn open(path: PathBuf) -> Result<Inner, JournalError> {
        let file = open_file(&path)?;
        let mut chain = Chain::START;
        let capacity = NonZeroUsize::new(JOURNAL_RECENT_REQUESTS_MAX).unwrap_or(NonZeroUsize::MIN);
        let mut recent = LruCache::sparse(capacity);
        {
            let _locked = Locked::new(&file, &path)?;
            for id in catch_up(&path, &file, &mut chain)? {
                recent.put(id, ());
            }
        }
        tracing::info!(path = %path.display(), lines = chain.seq, "erasure journal verified");
        Ok(Inner {
            path,
            verified_len: AtomicU64::new(chain.len),
            appender: Mutex::new(Appender { file, chain }),
            recent: Mutex::new(recent),
        })
    }

    // Every change of the state is made after its I/O succeeded, in plain assignments: a panic
    // elsewhere while holding a lock leaves it consistent, so a poisoned lock is taken as is.
    fn appender(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, LruCache<Uuid, ()>> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, request_ids: impl IntoIterator<Item = Uuid>) {
        let mut recent = self.recent();
        for id in request_ids {
            recent.put(id, ());
        }
    }

    /// Runs on a blocking thread: it waits for other threads (the appender lock) and other
    /// processes (the file's `flock`), and fsyncs.
    fn record(&self, destruction: &Destruction, rerun: bool) -> Result<bool, JournalError> {
        let path = &self.path;
        let mut guard = self.appender();
        let Appender { file, chain } = &mut *guard;
        let _locked = Locked::new(file, path)?;
        check_same_file(path, file, chain)?;
        let journaled = catch_up(path, file, chain)?;
        self.verified_len.store(chain.len, Ordering::Release);
        self.remember(journaled);
        if self.recent().get(&destruction.request_id).is_some() {
            return Ok(false);
        }
        if rerun && journaled_before(path, chain.len, destruction.request_id)? {
            self.remember([destruction.request_id]);
            return Ok(false);
        }
        let (bytes, next) = destruction
            .encode(*chain)
            .map_err(|e| io_error(path, io::Error::other(e)))?;
        if let Err(e) = (&*file).write_all(&bytes).and_then(|()| file.sync_data()) {
            // Nothing half-written stays behind: the next append starts on a line boundary.
            let _ = file.set_len(chain.len);
            return Err(io_error(path, e));
        }
        *chain = next;
        self.verified_len.store(chain.len, Ordering::Release);
        self.remember([destruction.request_id]);
        Ok(true)
    }
}

/// Opens the file for reading and appending, creating it `0600` (and making its directory
/// entry durable) if it does not exist.
fn open_file(path: &Path) -> Result<File, JournalError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.clone().create_new(true).mode(0o600).open(path) {
        Ok(file) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error(path, e))?;
            }
            tracing::info!(path = %path.display(), "erasure journal created");
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = options.open(path).map_err(|e| io_error(path, e))?;
            let mode = file.metadata().map_err(|e| io_error(path, e))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:04o}"),
                    "the erasure journal is accessible by group or others; chmod 600 is advised"
                );
            }
            Ok(file)
        }
        Err(e) => Err(io_error(path, e)),
    }
}

/// The file must still be the one this process verified: not replaced, not shortened.
fn check_same_file(path: &Path, file: &File, chain: &Chain) -> Result<(), JournalError> {
    let ours = file.metadata().map_err(|e| io_error(path, e))?;
    let named = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    let problem = if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
        "the file was replaced while the store was open"
    } else if ours.len() < chain.len {
        "the file is shorter than what this process verified: it was truncated"
    } else {
        return Ok(());
    };
    Err(JournalError::Corrupt {
        path: path.to_path_buf(),
        line: chain.seq,
        problem: problem.to_owned(),
    })
}

/// Reads and verifies what was appended after `chain` (all of it at open; another process's
/// appends later); returns the requests journaled whole. A torn last line is cut off.
fn catch_up(path: &Path, file: &File, chain: &mut Chain) -> Result<Vec<Uuid>, JournalError> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(chain.len)).map_err(|e| io_error(path, e))?;
    let mut lines = ChainReader::new(path, BufReader::new(reader), *chain, None);
    let mut journaled = Vec::new();
    loop {
        match lines.step()? {
            Step::Entry(entry) => {
                if entry.last_part {
                    journaled.push(entry.request_id);
                }
            }
            Step::End => break,
            Step::Torn => {
                tracing::warn!(
                    path = %path.display(),
                    line = lines.chain.seq + 1,
                    "erasure journal: its last line has no newline (an append that never completed, so its \
                     destruction never started); cut off"
                );
                file.set_len(lines.chain.len)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_error(path, e))?;
                break;
            }
        }
    }
    *chain = lines.chain;
    Ok(journaled)
}

/// Whether the first `len` bytes of the file hold the last part of `request_id` (they were
/// verified already: lines are only parsed here).
fn journaled_before(path: &Path, len: u64, request_id: Uuid) -> Result<bool, JournalError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut reader = BufReader::new(file.take(len));
    let mut buf = Vec::new();
    let needle = request_id.to_string();
    loop {
        match read_line(&mut reader, &mut buf).map_err(|e| io_error(path, e))? {
            ReadLine::Whole => {
                if !contains(&buf, needle.as_bytes()) {
                    continue;
                }
                if let Ok(line) = serde_json::from_slice::<Line>(&buf)
                    && line.request_id == request_id
                    && line.part == line.parts
                {
                    return Ok(true);
                }
            }
            ReadLine::End | ReadLine::Torn | ReadLine::TooLong => return Ok(false),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Holds the file's exclusive `flock` (other processes wait) until dropped.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File, path: &Path) -> Result<Self, JournalError> {
        file.lock().map_err(|e| io_error(path, e))?;
        Ok(Locked(file))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock that fails leaves nothing to undo.
        let _ = self.0.unlock();
    }
}

/// One line read.
enum ReadLine {
    /// A whole line, in the buffer without its newline.
    Whole,
    /// Bytes at the end of the file without a newline.
    Torn,
    /// No newline within [`JOURNAL_LINE_BYTES_MAX`] bytes.
    TooLong,
    End,
}

fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<ReadLine> {
    buf.clear();
    let limit = JOURNAL_LINE_BYTES_MAX as u64 + 1;
    let read = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    Ok(if read == 0 {
        ReadLine::End
    } else if buf.last() == Some(&b'\n') {
        buf.pop();
        ReadLine::Whole
    } else if read as u64 >= limit {
        ReadLine::TooLong
    } else {
        ReadLine::Torn
    })
}

enum Step {
    Entry(JournalEntry),
    Torn,
    End,
}

/// Reads lines after a verified chain, verifying each against it.
struct ChainReader<'p, R> {
    path: &'p Path,
    reader: R,
    chain: Chain,
    /// Stop here (the replay reads what was verified at open, no further).
    end: Option<u64>,
    buf: Vec<u8>,
}

impl<'p, R: BufRead> ChainReader<'p, R> {
    fn new(path: &'p Path, reader: R, chain: Chain, end: Option<u64>) -> Self {
        ChainReader {
            path,
            reader,
            chain,
            end,
            buf: Vec::new(),
        }
    }

    fn step(&mut self) -> Result<Step, JournalError> {
        if self.end.is_some_and(|end| self.chain.len >= end) {
            return Ok(Step::End);
        }
        let number = self.chain.seq + 1;
        let corrupt = |problem: String| JournalError::Corrupt {
            path: self.path.to_path_buf(),
            line: number,
            problem,
        };
        match read_line(&mut self.reader, &mut self.buf).map_err(|e| io_error(self.path, e))? {
            ReadLine::End => Ok(Step::End),
            ReadLine::Torn => Ok(Step::Torn),
            ReadLine::TooLong => Err(corrupt(format!(
                "longer than {JOURNAL_LINE_BYTES_MAX} bytes without a newline"
            ))),
            ReadLine::Whole => {
                let (entry, hash) = verify(&self.buf, number, &self.chain.head).map_err(corrupt)?;
                self.chain = Chain {
                    seq: number,
                    head: hash,
                    len: self.chain.len + self.buf.len() as u64 + 1,
                };
                Ok(Step::Entry(entry))
            }
        }
    }
}

/// Verifies one line (without its newline) as line `number` after a line hashed `prev`.
/// The problem it reports never quotes the line: a changed line may hold anything.
fn verify(raw: &[u8], number: u64, prev: &[u8; 32]) -> Result<(JournalEntry, [u8; 32]), String> {
    let line: Line = serde_json::from_slice(raw).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "not JSON",
            serde_json::error::Category::Eof => "incomplete JSON",
            serde_json::error::Category::Data => "a member is missing, unknown or of the wrong type",
        };
        format!("not a journal entry ({what}, at column {})", e.column())
    })?;
    let canonical = serde_json::to_vec(&line).map_err(|_| "cannot be serialized again".to_owned())?;
    if canonical != raw {
        return Err("not in the journal's canonical form (members in name order, no whitespace)".to_owned());
    }
    let entry = entry_of(&line, number)?;
    if line.seq != number {
        return Err(format!(
            "its seq is {}, expected {number}: a line was removed, added or reordered",
            line.seq
        ));
    }
    if line.prev != hex::encode(prev) {
        return Err("its prev is not the hash of the line before: a line was removed, changed or reordered".to_owned());
    }
    let hash = chain_hash(prev, &line.content()).map_err(|_| "cannot be hashed".to_owned())?;
    if line.hash != hex::encode(hash) {
        return Err("its hash does not match its content: the line was changed".to_owned());
    }
    Ok((entry, hash))
}

/// The entry a well-formed line describes.
fn entry_of(line: &Line, number: u64) -> Result<JournalEntry, String> {
    let at = DateTime::parse_from_rfc3339(&line.at)
        .map_err(|_| "its time is not RFC 3339".to_owned())?
        .with_timezone(&Utc);
    let target = match (line.target.as_str(), &line.subject, &line.stream) {
        ("subject", Some(subject), None) => ErasureTarget::Subject(
            SubjectId::new(subject.as_str()).map_err(|_| "its subject is not a subject id".to_owned())?,
        ),
        ("stream", None, Some(stream)) => ErasureTarget::Stream(
            StreamName::new(stream.as_str()).map_err(|_| "its stream is not a stream name".to_owned())?,
        ),
        _ => return Err("its target is neither one subject nor one stream".to_owned()),
    };
    if line.part == 0 || line.part > line.parts {
        return Err(format!("its part {} of {} is out of range", line.part, line.parts));
    }
    if line.streams.len() > JOURNAL_ENTRY_KEYS_MAX || line.keys.len() > JOURNAL_ENTRY_KEYS_MAX + 1 {
        return Err(format!("it lists more than {JOURNAL_ENTRY_KEYS_MAX} streams or keys"));
    }
    let streams = line
        .streams
        .iter()
        .map(|s| StreamName::new(s.as_str()).map_err(|_| "a stream it lists is not a stream name".to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JournalEntry {
        line: number,
        at,
        request_id: line.request_id,
        target,
        streams,
        keys: line.keys.iter().copied().map(KeyId).collect(),
        last_part: line.part == line.parts,
    })
}

/// What one erasure destroys, as the journal records it.
struct Destruction {
    request_id: Uuid,
    target: ErasureTarget,
    /// The streams shredded, with their keys.
    streams: Vec<(String, Option<Uuid>)>,
    subject_key: Option<Uuid>,
}

impl Destruction {
    fn of(erasure: &Erasure) -> Destruction {
        Destruction {
            request_id: erasure.id,
            target: erasure.target.clone(),
            streams: erasure
                .streams
                .iter()
                .flatten()
                .map(|s| (s.stream.clone(), s.key_id))
                .collect(),
            subject_key: erasure.subject_key,
        }
    }

    /// Its lines (one per [`JOURNAL_ENTRY_KEYS_MAX`] streams, at least one), chained after
    /// `chain`, and the chain after them.
    fn encode(&self, chain: Chain) -> Result<(Vec<u8>, Chain), serde_json::Error> {
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let (target, subject, stream) = match &self.target {
            ErasureTarget::Subject(s) => ("subject", Some(s.as_str().to_owned()), None),
            ErasureTarget::Stream(s) => ("stream", None, Some(s.as_str().to_owned())),
        };
        let chunks: Vec<&[(String, Option<Uuid>)]> = if self.streams.is_empty() {
            vec![&[]]
        } else {
            self.streams.chunks(JOURNAL_ENTRY_KEYS_MAX).collect()
        };
        let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        let mut bytes = Vec::new();
        let mut chain = chain;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let first = index == 0;
            let mut line = Line {
                at: at.clone(),
                hash: String::new(),
                keys: chunk
                    .iter()
                    .filter_map(|(_, key)| *key)
                    .chain(self.subject_key.filter(|_| first))
                    .collect(),
                part: u32::try_from(index + 1).unwrap_or(u32::MAX),
                parts,
                prev: hex::encode(chain.head),
                request_id: self.request_id,
                seq: chain.seq + 1,
                stream: stream.clone(),
                streams: chunk.iter().map(|(name, _)| name.clone()).collect(),
                subject: subject.clone(),
                target: target.to_owned(),
            };
            let hash = chain_hash(&chain.head, &line.content())?;
            line.hash = hex::encode(hash);
            let start = bytes.len();
            serde_json::to_writer(&mut bytes, &line)?;
            bytes.push(b'\n');
            chain = Chain {
                seq: line.seq,
                head: hash,
                len: chain.len + (bytes.len() - start) as u64,
            };
        }
        Ok((bytes, chain))
    }
}

fn io_error(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs file I/O on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| JournalError::Io {
        path: PathBuf::new(),
        source: io::Error::other(format!("the journal's I/O task failed: {e}")),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ErasureReason, ShreddedStream};

    fn erasure(streams: usize) -> Erasure {
        let mut erasure = Erasure::new(
            ErasureTarget::Subject(SubjectId::new("456").unwrap()),
            ErasureReason::default(),
            Utc::now(),
        );
        erasure.streams = Some(
            (0..streams)
                .map(|i| ShreddedStream {
                    stream: format!("user-private-{i}"),
                    key_id: Some(Uuid::new_v4()),
                })
                .collect(),
        );
        erasure.subject_key = Some(Uuid::new_v4());
        erasure
    }

    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn a_line_is_canonical_and_verifies_against_its_chain() {
        let erasure = erasure(2);
        let (bytes, chain) = Destruction::of(&erasure).encode(Chain::START).unwrap();
        let [line] = lines(&bytes)[..] else { panic!("one line") };
        let (entry, hash) = verify(line, 1, &[0; 32]).unwrap();
        assert_eq!(hash, chain.head);
        assert_eq!(entry.keys.len(), 3, "two stream keys and the subject key");
        assert_eq!(entry.streams.len(), 2);
        assert!(entry.last_part);
        let text = std::str::from_utf8(line).unwrap();
        assert!(text.starts_with("{\"at\":"), "{text}");
        assert!(text.contains("\"target\":\"subject\"") && text.contains("\"subject\":\"456\""));
        // Any change breaks it; so does a wrong predecessor or place.
        let changed = text.replace("user-private-1", "user-private-9");
        assert!(verify(changed.as_bytes(), 1, &[0; 32]).unwrap_err().contains("hash"));
        assert!(verify(line, 1, &[1; 32]).unwrap_err().contains("prev"));
        assert!(verify(line, 2, &[0; 32]).unwrap_err().contains("seq"));
        let spaced = text.replacen(':', ": ", 1);
        assert!(
            verify(spaced.as_bytes(), 1, &[0; 32])
                .unwrap_err()
                .contains("canonical")
        );
    }

    #[test]
    fn a_large_erasure_is_written_in_parts_that_chain() {
        let erasure = erasure(JOURNAL_ENTRY_KEYS_MAX + 1);
        let (bytes, chain) = Destruction::of(&erasure).encode(Chain::START).unwrap();
        let lines = lines(&bytes);
        assert_eq!(lines.len(), 2);
        let (first, hash) = verify(lines[0], 1, &[0; 32]).unwrap();
        let (second, last) = verify(lines[1], 2, &hash).unwrap();
        assert_eq!((first.last_part, second.last_part), (false, true));
        assert_eq!(
            first.keys.len(),
            JOURNAL_ENTRY_KEYS_MAX + 1,
            "the subject key in the first part"
        );
        assert_eq!(second.keys.len(), 1);
        assert_eq!((chain.seq, chain.head, chain.len), (2, last, bytes.len() as u64));
    }

    #[test]
    fn two_processes_append_to_one_chain_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erasures.journal");
        // Two handles on one file behave as two processes: each its own `flock`.
        let a = Inner::open(path.clone()).unwrap();
        let b = Inner::open(path.clone()).unwrap();
        let (first, second, third) = (erasure(1), erasure(2), erasure(0));
        assert!(a.record(&Destruction::of(&first), false).unwrap());
        assert!(b.record(&Destruction::of(&second), false).unwrap());
        assert!(a.record(&Destruction::of(&third), false).unwrap());
        // b read a's lines when it appended: a request either of them journaled is not again.
        assert!(!b.record(&Destruction::of(&first), false).unwrap());
        assert!(!a.record(&Destruction::of(&second), true).unwrap());
        let reopened = Inner::open(path.clone()).unwrap();
        assert_eq!(reopened.appender().chain.seq, 3);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A re-run after a restart finds the request in the file (not only in memory).
        let len = reopened.appender().chain.len;
        assert!(journaled_before(&path, len, second.id).unwrap());
        assert!(!journaled_before(&path, len, Uuid::new_v4()).unwrap());
    }

    #[test]
    fn a_problem_never_quotes_the_line() {
        let secret = "{\"at\":\"Ada Lovelace, 12 Analytical St\"}";
        let problem = verify(secret.as_bytes(), 1, &[0; 32]).unwrap_err();
        assert!(!problem.contains("Ada"), "{problem}");
    }
}
