//! What this process is told by where it runs: its environment variables
//! and the host's name. The bottom floor.

/// A variable of the environment; set but empty counts as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where settings read variables from: [`env`], or [`nothing`] for
/// servers named by a file alone (`--target-config`), whose settings must
/// not pick up the environment's, which name the servers backed up.
pub type Lookup = fn(&str) -> Option<String>;

/// No variable is set: settings come from their file and defaults alone.
pub fn nothing(_name: &str) -> Option<String> {
    None
}

/// This machine's name, for messages that leave it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
