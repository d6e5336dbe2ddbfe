//! How long a rank waits for the others before it gives up with an error, never a hang.
use anyhow::{bail, Result};
use std::time::Duration;

/// The two bounds of every wait (docs/distributed.md, "Timeouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `TI_DIST_TIMEOUT_S` (default 1800 s, PyTorch's default for a process group): the most a
    /// collective, a store read or the start-up rendezvous waits while every rank is alive (one
    /// busy writing a checkpoint or running validation, say).
    pub collective: Duration,
    /// `TI_DIST_HEARTBEAT_TIMEOUT_S` (default 30 s): every rank bumps a counter in the store
    /// about every second; a rank silent this long is taken as lost, and whoever waits for it
    /// stops with an error naming it. After a collective has already failed (a peer's socket
    /// closed), the silent rank is named as soon as it has missed a few beats.
    pub heartbeat: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { collective: Duration::from_secs(1800), heartbeat: Duration::from_secs(30) }
    }
}

impl Timeouts {
    /// The defaults, overridden by `TI_DIST_TIMEOUT_S` and `TI_DIST_HEARTBEAT_TIMEOUT_S`.
    pub fn from_env() -> Result<Timeouts> {
        Timeouts::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Timeouts> {
        let d = Timeouts::default();
        let read = |key: &str, default: Duration| -> Result<Duration> {
            match var(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => match v.parse::<f64>() {
                    Ok(s) if s.is_finite() && s > 0.0 && s <= 1e7 => Ok(Duration::from_secs_f64(s)),
                    _ => bail!("{key}={v:?} is not a number of seconds (above 0, at most 1e7)"),
                },
            }
        };
        Ok(Timeouts { collective: read("TI_DIST_TIMEOUT_S", d.collective)?, heartbeat: read("TI_DIST_HEARTBEAT_TIMEOUT_S", d.heartbeat)? })
    }

    /// How often each rank beats: often enough that `heartbeat` spans several beats.
    pub fn beat_interval(&self) -> Duration {
        (self.heartbeat / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// After a failed collective: a rank this long silent is the one that was lost.
    pub fn silence_after_failure(&self) -> Duration {
        (self.beat_interval() * 3).min(self.heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Timeouts::from_lookup(|_| None).unwrap(), Timeouts::default());
        let t = Timeouts::from_lookup(|k| match k {
            "TI_DIST_TIMEOUT_S" => Some("2.5".into()),
            "TI_DIST_HEARTBEAT_TIMEOUT_S" => Some("4".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(t.collective, Duration::from_millis(2500));
        assert_eq!(t.heartbeat, Duration::from_secs(4));
        assert_eq!(t.beat_interval(), Duration::from_millis(400));
        assert_eq!(Timeouts::default().beat_interval(), Duration::from_secs(1));
        assert_eq!(Timeouts::default().silence_after_failure(), Duration::from_secs(3));
        for bad in ["0", "-3", "soon", "inf", "NaN"] {
            let e = Timeouts::from_lookup(|k| (k == "TI_DIST_TIMEOUT_S").then(|| bad.to_string())).unwrap_err().to_string();
            assert!(e.contains(&format!("TI_DIST_TIMEOUT_S={bad:?} is not a number of seconds")), "{e}");
        }
    }
}
