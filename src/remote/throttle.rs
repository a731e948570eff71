//! Bandwidth limits of transfers to and from repositories
//! (`--limit-upload RATE`, `--limit-download RATE`, `[remote] limit_upload`,
//! `limit_download`): a transfer that runs ahead of its rate waits, so the
//! average over any stretch of it stays at the limit. Set once per process,
//! like the remote timeouts.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes per second allowed each way; `None`: as fast as the link goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub upload: Option<u64>,
    pub download: Option<u64>,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Set the limits of this process (the first call wins).
pub fn set_limits(limits: Limits) {
    let _ = LIMITS.set(limits);
}

fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Upload,
    Download,
}

/// The pace of one transfer.
pub struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(direction: Direction) -> Throttle {
        let limits = limits();
        Throttle {
            rate: match direction {
                Direction::Upload => limits.upload,
                Direction::Download => limits.download,
            },
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Count `n` bytes as sent (or received); wait while the transfer is
    /// ahead of its rate.
    pub async fn pass(&mut self, n: usize) {
        self.bytes += n as u64;
        let Some(rate) = self.rate else {
            return;
        };
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// A rate such as `50MiB/s`, `20MB/s`, `800KiB/s`, `1.5GiB/s` or `1000000`
/// (bytes per second; the `/s` is optional), in bytes per second.
pub fn parse_rate(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let body = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim();
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" | "k" | "kB" => 1e3,
        "KiB" => 1024.0,
        "M" | "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "G" | "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use B, KB, KiB, MB, MiB, GB or GiB, per second: 50MiB/s)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a rate (for example 50MiB/s)"))?;
    let rate = (value * factor).round();
    if !(rate >= 1.0 && rate < u64::MAX as f64) {
        return Err(format!("'{text}' is not a rate above zero"));
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_their_units() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_rate("20MB/s"), Ok(20_000_000));
        assert_eq!(parse_rate("800KiB"), Ok(800 * 1024));
        assert_eq!(parse_rate("1.5GiB/s"), Ok(1_610_612_736));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("0MiB/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5 furlongs/s").is_err());
    }

    #[tokio::test]
    async fn a_throttled_transfer_keeps_to_its_rate() {
        let mut throttle = Throttle {
            rate: Some(10 * 1024 * 1024),
            started: Instant::now(),
            bytes: 0,
        };
        for _ in 0..5 {
            throttle.pass(1024 * 1024).await;
        }
        let seconds = throttle.started.elapsed().as_secs_f64();
        assert!((0.45..0.6).contains(&seconds), "{seconds}");
    }
}
