//! A run's lock: an exclusive OS file lock on `<run>/lock` (flock on Unix,
//! LockFileEx on Windows) held by the one process that writes the run. The
//! OS drops it when that process dies, even by `kill -9`, so a lock is
//! never stale; the pid written into the file only names the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::Run;
use crate::error::{Error, Result};

/// Held while a process writes a run (trains or resumes it). Dropping it
/// releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    run_id: String,
}

impl RunLock {
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Clear the pid while still holding the lock; closing the file
        // releases it.
        let _ = self.file.set_len(0);
    }
}

impl Run {
    /// Takes the run's lock, or fails at once when another process (or
    /// another part of this one) holds it: [`Error::RunInUse`] names the
    /// holder's pid. Then deletes temporary checkpoint folders a crashed
    /// writer left behind.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::RunInUse {
                    id: self.id.clone(),
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        written.map_err(|e| Error::io(&path, e))?;
        let lock = RunLock {
            file,
            path,
            run_id: self.id.clone(),
        };
        self.clean_stale_checkpoints()?;
        Ok(lock)
    }

    /// Whether some process (this one included) holds the run's lock now.
    pub fn is_locked(&self) -> bool {
        self.lock_holder().is_some()
    }

    /// `Some(pid)` when the run's lock is held (`pid` is `None` when the
    /// holder's pid cannot be read), `None` when it is free.
    pub fn lock_holder(&self) -> Option<Option<u32>> {
        // Opened for writing: some platforms (NFS) only lock exclusively
        // through a writable handle. Never created here: no file, no holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.lock_path())
            .ok()?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
