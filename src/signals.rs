//! SIGINT, SIGTERM and SIGHUP (a closed terminal): the runs this process
//! trains are stopped the way the stop control stops them — the step
//! finishes, a checkpoint is written, the run reports finished. A second
//! signal ends the process at once; the run then resumes from its last
//! checkpoint.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock};

use crate::train::Control;

static STOPS: Mutex<Vec<Sender<Control>>> = Mutex::new(Vec::new());
static RECEIVED: AtomicU32 = AtomicU32::new(0);
/// When the first signal came (milliseconds since the epoch).
static FIRST_AT: AtomicU64 = AtomicU64::new(0);
/// Signals within this long of the first count as the same one: `timeout`
/// and a closing terminal signal the process and its group at once.
const SAME_SIGNAL_MS: u64 = 1000;
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the handler (once per process); false when another handler
/// already owns the signals, and the default (the process ends) stays.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let first = FIRST_AT.load(Ordering::SeqCst);
            if first != 0 && now.saturating_sub(first) < SAME_SIGNAL_MS {
                return;
            }
            if first == 0 {
                FIRST_AT.store(now, Ordering::SeqCst);
            }
            let n = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
            if n > 1 {
                eprintln!("\nstopping now; the run resumes from its last checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nstopping after this step (again to quit at once)");
            if let Ok(stops) = STOPS.lock() {
                for tx in stops.iter() {
                    let _ = tx.send(Control::Stop);
                }
            }
        })
        .is_ok()
    })
}

/// A run to stop when a signal comes.
pub fn stop_on_signal(controls: Sender<Control>) {
    install();
    if let Ok(mut stops) = STOPS.lock() {
        stops.push(controls);
    }
}

/// How many signals arrived.
pub fn received() -> u32 {
    RECEIVED.load(Ordering::SeqCst)
}
