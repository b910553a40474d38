//! The embedded store of one process: its state in a redb database (pure Rust, ACID, a stable
//! file format) in a state directory on local disk, so that a restart, a deploy or a `kill -9`
//! forgets nothing: the task registry ([`EmbeddedRegistry`]), the idempotency records
//! ([`EmbeddedSubmitStore`]) and the export jobs ([`EmbeddedJobStore`]) live here in
//! single-process mode.
//!
//! The directory holds two files: `LOCK` (locked for as long as the process runs, holding its
//! pid, so that a second process on the same directory is refused with the holder's name) and
//! `state.redb`. One process per directory: two processes writing one registry would each
//! believe the other's tasks unknown.

mod jobs;
mod registry;
mod schedules;
mod submit;

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};

pub use self::{jobs::EmbeddedJobStore, registry::EmbeddedRegistry, submit::EmbeddedSubmitStore};
use super::{StoreError, Unavailable};

/// The state directory of `cargo run -- serve` when none is given: beside where it runs, as
/// Prometheus's `data/` and etcd's `default.etcd` are.
pub const DEFAULT_STATE_DIR: &str = "stream-export-data";

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "state.redb";

/// The lock file inside the state directory.
pub const LOCK_FILE: &str = "LOCK";

/// What a state file says about itself: a redb file without it is another program's.
const FORMAT: &[u8] = b"stream-export state v1";

/// Facts about the state itself: its format, the page-token key.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why a state directory cannot be used; the process exits with code 2 and this message.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The directory or a file in it cannot be created or written.
    #[error("the state directory {dir} cannot be used (--state-dir, STREAM_EXPORT_STATE_DIR): {why}")]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
    /// Another process holds the directory.
    #[error(
        "the state directory {dir} is in use by another stream-export process ({holder}); \
         give each instance its own --state-dir"
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// Who holds it: `pid N`, or what is known.
        holder: String,
    },
    /// The database file is corrupt, or not this service's.
    #[error("the state file {file} is corrupt or not a stream-export state file: {why}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What redb or the format check said.
        why: String,
    },
}

/// An open state directory: the locked directory and its database. The lock is held until this
/// is dropped (and by the kernel only as long as the process lives: a `kill -9` frees it).
#[derive(Debug)]
pub struct StateDir {
    db: Arc<StateDb>,
    page_token_key: [u8; 32],
}

impl StateDir {
    /// Creates (if needed), locks and opens the state directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateDirError> {
        let unusable = |why: String| StateDirError::Unusable { dir: dir.to_owned(), why };
        std::fs::create_dir_all(dir).map_err(|error| unusable(format!("cannot create it: {error}")))?;
        let lock = lock(dir)?;
        let file = dir.join(DATABASE_FILE);
        let open_file = file.clone();
        let db = StateDb::open(Box::new(move || open_database(&open_file)), lock).map_err(|error| match error {
            OpenError::Io(why) => unusable(why),
            OpenError::Corrupt(why) => StateDirError::Corrupt { file: file.clone(), why },
        })?;
        let page_token_key = db.meta_setup().map_err(|why| match why {
            OpenError::Io(why) => unusable(why),
            OpenError::Corrupt(why) => StateDirError::Corrupt { file: file.clone(), why },
        })?;
        Ok(Self { db: Arc::new(db), page_token_key })
    }

    /// The database, shared by the stores.
    pub fn db(&self) -> Arc<StateDb> {
        Arc::clone(&self.db)
    }

    /// The key that authenticates `ListTasks` page tokens, kept in the state so that tokens
    /// stay good across a restart.
    pub fn page_token_key(&self) -> [u8; 32] {
        self.page_token_key
    }
}

/// Takes the directory's lock file and writes this process's pid into it.
fn lock(dir: &Path) -> Result<File, StateDirError> {
    let path = dir.join(LOCK_FILE);
    let unusable = |why: String| StateDirError::Unusable { dir: dir.to_owned(), why };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| unusable(format!("cannot write {}: {error}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "a process that has not written its pid yet".to_owned(),
            };
            return Err(StateDirError::InUse { dir: dir.to_owned(), holder });
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(unusable(format!("cannot lock {}: {error}", path.display())));
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all());
    written.map_err(|error| unusable(format!("cannot write {}: {error}", path.display())))?;
    Ok(file)
}

/// Opens (or creates) the database file, checking every page: a file altered outside redb is
/// refused, not trusted.
fn open_database(file: &Path) -> Result<Database, OpenError> {
    let opened = std::panic::catch_unwind(|| Database::builder().set_check_integrity_on_open(true).create(file))
        .map_err(|_| OpenError::Corrupt("redb could not read it".to_owned()))?;
    opened.map_err(|error| classify_open_error(&error))
}

/// Whether an open failed on the disk (the directory is unusable) or on the file's content.
fn classify_open_error(error: &DatabaseError) -> OpenError {
    match error {
        DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() != std::io::ErrorKind::InvalidData => {
            OpenError::Io(error.to_string())
        }
        DatabaseError::DatabaseAlreadyOpen => OpenError::Io(error.to_string()),
        _ => OpenError::Corrupt(error.to_string()),
    }
}

/// Why a database could not be opened.
#[derive(Debug)]
enum OpenError {
    /// The disk or the file system.
    Io(String),
    /// What the file holds.
    Corrupt(String),
}

/// Opens the database again (after an I/O failure that redb will not go past).
type Opener = Box<dyn Fn() -> Result<Database, OpenError> + Send + Sync>;

/// The state database, reopened after a failed write: after an I/O error (a full disk) redb
/// refuses every later transaction until the database is closed, so the first write that finds
/// it so closes and reopens it (with recovery). Reads and writes are synchronous and short.
pub struct StateDb {
    db: RwLock<Option<Database>>,
    open: Opener,
    _lock: Option<File>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").finish_non_exhaustive()
    }
}

impl StateDb {
    fn open(open: Opener, lock: File) -> Result<Self, OpenError> {
        let db = open()?;
        Ok(Self { db: RwLock::new(Some(db)), open, _lock: Some(lock) })
    }

    /// A database opened by `open`, without a directory lock (tests with their own backends).
    #[cfg(test)]
    fn with_opener(open: impl Fn() -> Result<Database, DatabaseError> + Send + Sync + 'static) -> Self {
        let open: Opener = Box::new(move || open().map_err(|error| classify_open_error(&error)));
        let db = open().ok();
        Self { db: RwLock::new(db), open, _lock: None }
    }

    /// Checks the format marker (writing it into a new file) and returns the page-token key
    /// (made on first use).
    fn meta_setup(&self) -> Result<[u8; 32], OpenError> {
        let setup = self.write(redb::Durability::Immediate, |tx| {
            let foreign = {
                let tables = tx.list_tables()?.map(|table| table.name().to_owned()).collect::<Vec<_>>();
                let mut meta = tx.open_table(META)?;
                let format = meta.get("format")?.map(|value| value.value().to_vec());
                match format {
                    Some(format) if format == FORMAT => None,
                    Some(other) => Some(format!("its format is {:?}", String::from_utf8_lossy(&other))),
                    None if tables.iter().any(|name| name != "meta") => {
                        Some(format!("it holds another program's tables ({})", tables.join(", ")))
                    }
                    None => {
                        meta.insert("format", FORMAT)?;
                        None
                    }
                }
            };
            if let Some(why) = foreign {
                return Ok(Err(why));
            }
            let mut meta = tx.open_table(META)?;
            let key = meta.get("page_token_key")?.and_then(|value| <[u8; 32]>::try_from(value.value()).ok());
            let key = match key {
                Some(key) => key,
                None => {
                    let key: [u8; 32] = rand::random();
                    meta.insert("page_token_key", key.as_slice())?;
                    key
                }
            };
            Ok(Ok(key))
        });
        match setup {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(foreign)) => Err(OpenError::Corrupt(foreign)),
            Err(error) => Err(OpenError::Io(error.to_string())),
        }
    }

    /// Runs `read` in a read transaction.
    pub fn read<T>(&self, read: impl FnOnce(&ReadTransaction) -> Result<T, redb::Error>) -> Result<T, StoreError> {
        self.reopen_if_closed();
        let guard = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(db) = guard.as_ref() else { return Err(unavailable("the state database cannot be opened")) };
        let tx = db.begin_read().map_err(|error| failed(&error.into()))?;
        read(&tx).map_err(|error| failed(&error))
    }

    /// Runs `write` in a write transaction and commits it with `durability`; nothing is
    /// committed when it fails. After an I/O failure, the database is reopened for the next
    /// call.
    pub fn write<T>(
        &self,
        durability: redb::Durability,
        write: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.reopen_if_closed();
        let outcome = {
            let guard = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(db) = guard.as_ref() else { return Err(unavailable("the state database cannot be opened")) };
            transact(db, durability, write)
        };
        if let Err(error) = &outcome
            && matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Backend(_))
        {
            self.reopen();
        }
        outcome.map_err(|error| failed(&error))
    }

    /// Opens the database if a failed reopen left it closed.
    fn reopen_if_closed(&self) {
        let closed = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none();
        if closed {
            let mut guard = self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if guard.is_none() {
                *guard = (self.open)().ok();
            }
        }
    }

    /// Closes the database and opens it again (redb recovers it to its last commit).
    fn reopen(&self) {
        let mut guard = self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Closed first: the file is locked by the open handle.
        drop(guard.take());
        match (self.open)() {
            Ok(db) => *guard = Some(db),
            Err(error) => {
                tracing::warn!(?error, "the state database could not be reopened; the next write tries again")
            }
        }
    }
}

/// Runs [`StateDb::write`] on the blocking pool: a durable commit waits for the disk.
async fn write_blocking<T: Send + 'static>(
    db: &Arc<StateDb>,
    durability: redb::Durability,
    write: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, StoreError> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || db.write(durability, write))
        .await
        .unwrap_or_else(|_| Err(unavailable("a state database write ended abnormally")))
}

fn transact<T>(
    db: &Database,
    durability: redb::Durability,
    write: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
) -> Result<T, redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability)?;
    let value = write(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// A store failure from redb: the state cannot be read or written (a full disk, say).
fn failed(error: &redb::Error) -> StoreError {
    unavailable(&format!("the state database failed: {error}"))
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(Unavailable(format!("the state store is unavailable: {why}")))
}

/// Milliseconds since the epoch, now.
fn now_millis() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stream-export-state-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_second_open_of_one_directory_names_the_holder() {
        let dir = scratch("lock");
        let first = StateDir::open(&dir).expect("the first open");
        let second = StateDir::open(&dir).expect_err("the second open is refused");
        let message = second.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        let key = first.page_token_key();
        drop(first);
        let reopened = StateDir::open(&dir).expect("free again once the first is gone");
        assert_eq!(reopened.page_token_key(), key, "the page-token key is kept in the state");
    }

    #[test]
    fn a_foreign_or_corrupt_file_is_refused_naming_it() {
        let dir = scratch("foreign");
        std::fs::write(dir.join(DATABASE_FILE), b"this is not a database, just some text that is long enough").unwrap();
        let error = StateDir::open(&dir).expect_err("refused");
        assert!(matches!(error, StateDirError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains(DATABASE_FILE), "{error}");

        let other = scratch("other-program");
        {
            let db = Database::create(other.join(DATABASE_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TableDefinition::<u64, u64>::new("their_table")).unwrap().insert(1, 2).unwrap();
            tx.commit().unwrap();
        }
        let error = StateDir::open(&other).expect_err("refused");
        assert!(error.to_string().contains("their_table"), "{error}");
    }
}
