//! WAL positions (`0/81000028`) and the segment files they fall in
//! (`000000010000000000000081`): the arithmetic PostgreSQL uses, for the
//! default and any other segment size.

use std::fmt;

/// A position in the WAL: PostgreSQL's `pg_lsn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `X/Y`, both hexadecimal, as PostgreSQL prints a position.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }

    /// The number of the segment holding this position.
    pub fn segment(self, segment_bytes: u64) -> u64 {
        self.0 / segment_bytes
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The file name of segment `segment` of `timeline`.
pub fn segment_name(timeline: u32, segment: u64, segment_bytes: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_bytes;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_id,
        segment % per_id
    )
}

/// The timeline and segment number a segment file name stands for.
pub fn parse_segment_name(name: &str, segment_bytes: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    let per_id = 0x1_0000_0000 / segment_bytes;
    (seg < per_id).then_some((timeline, log * per_id + seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn positions_and_segment_names_follow_postgresql() {
        let lsn = Lsn::parse("0/81000028").unwrap();
        assert_eq!(lsn.to_string(), "0/81000028");
        assert_eq!(
            segment_name(1, lsn.segment(SEG), SEG),
            "000000010000000000000081"
        );
        let far = Lsn::parse("1A/FF000000").unwrap();
        assert_eq!(
            segment_name(3, far.segment(SEG), SEG),
            "000000030000001A000000FF"
        );
        assert_eq!(
            parse_segment_name("000000030000001A000000FF", SEG),
            Some((3, far.segment(SEG)))
        );
        assert_eq!(parse_segment_name("000000030000001A00000100", SEG), None);
        assert_eq!(Lsn::parse("nonsense"), None);
        assert!(Lsn::parse("0/2") < Lsn::parse("1/0"));
    }
}
