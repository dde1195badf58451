//! Checkpoints: `checkpoints/step-<N>/` folders, written whole or not at all.
//!
//! A checkpoint is written into `checkpoints/.tmp-step-<N>-<pid>/`, its files
//! and the folder synced, a [`COMPLETE_MARKER`] file written last, and only
//! then renamed to `step-<N>`. A crash leaves at most a `.tmp-*` folder,
//! which readers ignore and the next writer deletes.

use std::path::{Path, PathBuf};

use super::Run;
use crate::error::{Error, Result};

/// The file a checkpoint's folder holds once every other file is in it.
pub const COMPLETE_MARKER: &str = "COMPLETE";

const TMP_PREFIX: &str = ".tmp-";

impl Run {
    /// Writes checkpoint `step`: `write` puts its files into a fresh
    /// temporary folder, which is synced, marked complete and renamed to
    /// `checkpoints/step-<step>` (replacing one of the same step). Then
    /// keeps only the newest `keep_last` checkpoints (0 keeps all; the one
    /// just written is always kept). When `write` fails, its error is
    /// returned and nothing of the checkpoint is left. Hold the run's
    /// [`RunLock`](super::RunLock) while writing.
    pub fn write_checkpoint<F>(&self, step: u64, keep_last: usize, write: F) -> Result<PathBuf>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        let dir = self.checkpoints_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!("{TMP_PREFIX}step-{step}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

        let filled = write(&tmp).and_then(|()| seal(&tmp, step));
        if let Err(e) = filled {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let target = dir.join(format!("step-{step}"));
        let moved = move_into_place(&dir, &tmp, &target, step);
        if let Err(e) = moved {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if keep_last > 0 {
            self.prune_checkpoints(keep_last, Some(step))?;
        }
        Ok(target)
    }

    /// The complete checkpoints, oldest first: `(step, folder)`. Temporary
    /// folders and folders without the [`COMPLETE_MARKER`] are left out.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(step) = name.to_str().and_then(parse_step_dir) else {
                continue;
            };
            let path = entry.path();
            if path.join(COMPLETE_MARKER).is_file() {
                out.push((step, path));
            }
        }
        out.sort_by_key(|(step, _)| *step);
        Ok(out)
    }

    /// `e`, met reading checkpoint `step`, as one sentence that names the
    /// file and says what to do: delete the damaged folder to go back to
    /// the checkpoint before it (resume then starts there).
    pub fn damaged_checkpoint(&self, step: u64, e: Error) -> Error {
        let earlier = self
            .checkpoints()
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|(s, _)| *s < step);
        let dir = self.checkpoints_dir().join(format!("step-{step}"));
        let hint = match earlier {
            Some((prev, _)) => format!(
                "checkpoint step-{step} is damaged: delete {} to go back to the checkpoint of step {prev}",
                dir.display()
            ),
            None => format!(
                "checkpoint step-{step} is damaged and the run has no earlier one: delete {} to train the run again from step 0",
                dir.display()
            ),
        };
        match e {
            // The weights are whole but the config was edited (the model
            // loader says so in these words; it lives in `model`, which
            // has no typed variant for it).
            Error::Checkpoint { path, message } if message.contains("another model shape") => {
                Error::Checkpoint {
                    path,
                    message: format!(
                        "{message}; the [model] section of {} no longer matches the checkpoints: put back the shape the run was trained with",
                        self.config_path().display()
                    ),
                }
            }
            Error::Checkpoint { path, message } => Error::Checkpoint {
                path,
                message: format!("{message}; {hint}"),
            },
            Error::Io { path, source } => {
                let what = if source.kind() == std::io::ErrorKind::NotFound {
                    "missing (a checkpoint holds model.safetensors, optimizer.safetensors and state.json)".to_string()
                } else {
                    source.to_string()
                };
                Error::Checkpoint {
                    path,
                    message: format!("{what}; {hint}"),
                }
            }
            other => other,
        }
    }

    /// The newest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        self.checkpoints().ok()?.pop()
    }

    /// Deletes the oldest complete checkpoints until `keep_last` are left
    /// (never the one at `keep_step`). `keep_last` 0 keeps all.
    pub fn prune_checkpoints(&self, keep_last: usize, keep_step: Option<u64>) -> Result<()> {
        if keep_last == 0 {
            return Ok(());
        }
        let all = self.checkpoints()?;
        let excess = all.len().saturating_sub(keep_last);
        for (step, path) in all
            .into_iter()
            .filter(|(s, _)| Some(*s) != keep_step)
            .take(excess)
        {
            // Out of sight first (a `.tmp-` name), so a crash mid-delete
            // never leaves a half checkpoint under a final name.
            let doomed = self.checkpoints_dir().join(format!(
                "{TMP_PREFIX}pruned-step-{step}-{}",
                std::process::id()
            ));
            let target = match std::fs::rename(&path, &doomed) {
                Ok(()) => doomed,
                Err(_) => path,
            };
            std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        }
        Ok(())
    }

    /// Deletes `.tmp-*` folders a crashed writer left in `checkpoints/`.
    /// Called when the run's lock is taken, so no live writer owns them.
    pub(super) fn clean_stale_checkpoints(&self) -> Result<()> {
        let dir = self.checkpoints_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TMP_PREFIX));
            if stale {
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }
}

/// `step-<N>` → N (digits only).
fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Syncs every file under `tmp`, writes the marker, syncs the folder.
fn seal(tmp: &Path, step: u64) -> Result<()> {
    sync_tree(tmp)?;
    let marker = tmp.join(COMPLETE_MARKER);
    if let Some(e) = super::fault::disk_full() {
        return Err(Error::io(&marker, e));
    }
    let text = format!(
        "{{\"step\":{step},\"time\":{}}}\n",
        crate::train::events::now()
    );
    let written = std::fs::File::create(&marker).and_then(|mut f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    written.map_err(|e| Error::io(&marker, e))?;
    sync_dir(tmp).map_err(|e| Error::io(tmp, e))
}

/// Renames `tmp` to `target`, moving an old checkpoint of the same step
/// aside first, and syncs the checkpoints folder.
fn move_into_place(dir: &Path, tmp: &Path, target: &Path, step: u64) -> Result<()> {
    let old = dir.join(format!(
        "{TMP_PREFIX}replaced-step-{step}-{}",
        std::process::id()
    ));
    let had_old = target.exists();
    if had_old {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
    }
    std::fs::rename(tmp, target).map_err(|e| Error::io(target, e))?;
    sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// fsyncs every file and folder under `path`.
fn sync_tree(path: &Path) -> Result<()> {
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&p, e))?;
        if kind.is_dir() {
            sync_tree(&p)?;
        } else if kind.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&p, e))?;
        }
    }
    sync_dir(path).map_err(|e| Error::io(path, e))
}

/// fsyncs a folder, so the names in it (a rename, a new file) are durable.
/// A no-op where folders cannot be opened (Windows).
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(path)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_dir_names() {
        assert_eq!(parse_step_dir("step-0"), Some(0));
        assert_eq!(parse_step_dir("step-1200"), Some(1200));
        for bad in [
            "step-",
            "step-+3",
            "step-1a",
            ".tmp-step-3-9",
            "step3",
            "Step-3",
        ] {
            assert_eq!(parse_step_dir(bad), None, "{bad}");
        }
    }
}
