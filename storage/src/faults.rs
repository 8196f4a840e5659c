//! Named places where a test can make storage fail or the process stop,
//! to check what happens at exactly that step (a checkpoint's deletion,
//! the gap between a commit and its application, ...).
//!
//! Built only with the `fault-injection` feature: without it, [`hit`] is an
//! empty inline function and nothing here costs anything. A test arms a
//! point with [`arm`] (in process) or, for a child process, through the
//! `WALLET_FAULTS` environment variable: `name=error` or `name=abort`,
//! separated by commas; `name=error*3` fails the next three hits.

/// What an armed point does when reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an I/O error, this many more times.
    Error(u32),
    /// The process aborts at once, as kill -9 would stop it there.
    Abort,
}

/// The points, by name; every call site names one of these.
pub mod points {
    /// After the old journal segments are unlinked, before their
    /// directory is synced (a checkpoint's last step).
    pub const DELETE_SEGMENTS: &str = "journal.delete_segments";
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use super::Fault;

    fn table() -> &'static Mutex<HashMap<String, Fault>> {
        static TABLE: OnceLock<Mutex<HashMap<String, Fault>>> = OnceLock::new();
        TABLE.get_or_init(|| Mutex::new(from_env()))
    }

    fn from_env() -> HashMap<String, Fault> {
        let mut faults = HashMap::new();
        let Ok(spec) = std::env::var("WALLET_FAULTS") else { return faults };
        for item in spec.split(',').filter(|item| !item.is_empty()) {
            let Some((name, action)) = item.split_once('=') else { continue };
            let fault = match action.split_once('*') {
                Some(("error", times)) => times.parse().ok().map(Fault::Error),
                None if action == "error" => Some(Fault::Error(1)),
                None if action == "abort" => Some(Fault::Abort),
                _ => None,
            };
            if let Some(fault) = fault {
                faults.insert(name.to_string(), fault);
            }
        }
        faults
    }

    pub fn arm(name: &str, fault: Fault) {
        table().lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string(), fault);
    }

    pub fn hit(name: &str) -> std::io::Result<()> {
        let mut table = table().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match table.get_mut(name) {
            None | Some(Fault::Error(0)) => Ok(()),
            Some(Fault::Abort) => {
                eprintln!("fault injected: abort at {name}");
                std::process::abort()
            }
            Some(Fault::Error(left)) => {
                *left -= 1;
                Err(std::io::Error::other(format!("fault injected at {name}")))
            }
        }
    }
}

/// Arms `name`: the next time storage reaches it, `fault` happens.
#[cfg(feature = "fault-injection")]
pub fn arm(name: &str, fault: Fault) {
    armed::arm(name, fault);
}

/// Storage reached the point `name`: fails or aborts if a test armed it.
#[cfg(feature = "fault-injection")]
pub fn hit(name: &str) -> std::io::Result<()> {
    armed::hit(name)
}

/// Storage reached the point `name` (no faults in this build).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_name: &str) -> std::io::Result<()> {
    Ok(())
}
