//! Injected write failures for the fault tests: a full disk on demand.
//!
//! In debug builds only (tests build the binary that way), when
//! `T5_TUI_FAULT_DISK_FULL` names a file and that file exists, the run
//! store's writes of the run's data fail as on a full disk: an
//! `events.jsonl` append writes half its line and fails, a checkpoint
//! fails after its files are written but before it is sealed. Deleting the
//! file "frees the space". Release builds never read the variable.

use std::io;

/// The variable naming the flag file.
pub const DISK_FULL_ENV: &str = "T5_TUI_FAULT_DISK_FULL";

/// `Some(error)` while an injected full disk is on.
pub(crate) fn disk_full() -> Option<io::Error> {
    #[cfg(debug_assertions)]
    {
        use std::path::PathBuf;
        use std::sync::OnceLock;
        static FLAG: OnceLock<Option<PathBuf>> = OnceLock::new();
        let flag = FLAG.get_or_init(|| {
            std::env::var_os(DISK_FULL_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if flag.as_ref().is_some_and(|f| f.exists()) {
            return Some(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("no space left on device (injected by {DISK_FULL_ENV})"),
            ));
        }
    }
    None
}
