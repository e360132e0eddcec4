//! The machine's host name, for holder IDs and StatefulSet ordinals.

/// `$HOSTNAME` (set in containers and pods, and by most shells), else the kernel's.
pub fn detect() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
