//! Bandwidth limits of transfers to and from repositories
//! (`--limit-upload RATE`, `--limit-download RATE`, `[remote] limit_upload`,
//! `limit_download`): a transfer that runs ahead of its rate waits, so the
//! average over any stretch of it stays at the limit. Set once per process,
//! like the remote timeouts.

use std::sync::{Mutex, OnceLock};
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

/// One direction of the link: the time it is booked until. Transfers
/// running at once (a streaming backup uploads every store's artifact side
/// by side) share the rate rather than each taking it whole.
pub struct Link {
    booked: Mutex<Option<Instant>>,
}

impl Link {
    const fn new() -> Link {
        Link {
            booked: Mutex::new(None),
        }
    }

    /// Book `n` bytes at `rate` after whatever is booked already; answers
    /// when they are due. A booking that fell behind by up to [`CATCH_UP`]
    /// (the time spent handling each chunk) is kept, so that time is not
    /// lost on every chunk; after a longer pause the link starts again at
    /// most [`CATCH_UP`] back: a pause earns no more burst than that.
    fn book(&self, n: usize, rate: u64) -> Instant {
        let mut booked = self.booked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let floor = now.checked_sub(CATCH_UP).unwrap_or(now);
        let start = booked.map_or(now, |b| b.max(floor));
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        *booked = Some(due);
        due
    }
}

/// How far behind its booking a transfer may fall and still catch up.
const CATCH_UP: Duration = Duration::from_millis(250);

static UPLOADS: Link = Link::new();
static DOWNLOADS: Link = Link::new();

/// The pace of one transfer.
pub struct Throttle {
    rate: Option<u64>,
    link: &'static Link,
}

impl Throttle {
    pub fn new(direction: Direction) -> Throttle {
        let limits = limits();
        match direction {
            Direction::Upload => Throttle {
                rate: limits.upload,
                link: &UPLOADS,
            },
            Direction::Download => Throttle {
                rate: limits.download,
                link: &DOWNLOADS,
            },
        }
    }

    /// Count `n` bytes as sent (or received); wait until the link's rate
    /// allows them.
    pub async fn pass(&mut self, n: usize) {
        let Some(rate) = self.rate else {
            return;
        };
        let due = self.link.book(n, rate);
        tokio::time::sleep_until(due.into()).await;
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
        static LINK: Link = Link::new();
        let mut throttle = Throttle {
            rate: Some(10 * 1024 * 1024),
            link: &LINK,
        };
        let started = Instant::now();
        for _ in 0..5 {
            throttle.pass(1024 * 1024).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        assert!((0.45..0.6).contains(&seconds), "{seconds}");
    }

    #[tokio::test]
    async fn the_time_spent_on_each_chunk_is_not_lost() {
        // 64 chunks of 16 KiB at 10 MiB/s, each handled for 1 ms: 0.1 s
        // in all, not 0.1 s plus 64 ms of handling and timer slack.
        static LINK: Link = Link::new();
        let mut throttle = Throttle {
            rate: Some(10 * 1024 * 1024),
            link: &LINK,
        };
        let started = Instant::now();
        for _ in 0..64 {
            std::thread::sleep(Duration::from_millis(1));
            throttle.pass(16 * 1024).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        assert!((0.095..0.13).contains(&seconds), "{seconds}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfers_at_once_share_the_rate() {
        static LINK: Link = Link::new();
        let started = Instant::now();
        let transfer = || async {
            let mut throttle = Throttle {
                rate: Some(10 * 1024 * 1024),
                link: &LINK,
            };
            for _ in 0..5 {
                throttle.pass(1024 * 1024).await;
            }
        };
        tokio::join!(transfer(), transfer(), transfer());
        let seconds = started.elapsed().as_secs_f64();
        assert!((1.45..1.65).contains(&seconds), "{seconds}");
    }
}
