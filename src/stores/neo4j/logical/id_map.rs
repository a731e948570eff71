//! The restore's map from exported node ids to the ids of the nodes it
//! created, bounded in memory whatever the graph's size.

use std::collections::HashMap;
use std::path::Path;

use super::IdSet;

/// Exported node id → id of the node the restore created for it. Relationships
/// find their endpoints by that id (a direct lookup), so the restore needs no
/// temporary label, property or index, and no clean-up pass over every node.
///
/// Element ids end in a dense integer, which indexes the map: the first
/// `NEAR_SLOTS` in memory (4 bytes each, 16 MB at most), the rest in a file of
/// 8-byte slots that the operating system caches. A slot holds new id + 1, so
/// a hole reads as 0, "absent". Memory stays bounded whatever the graph's size.
pub(super) struct IdMap {
    near: Vec<u32>,
    far: std::fs::File,
    far_used: bool,
    other: HashMap<String, i64>,
}

const NEAR_SLOTS: usize = 1 << 22;
/// Ids beyond this (never seen in practice) go to the hash map.
const MAX_SLOT: usize = 1 << 36;

impl IdMap {
    pub fn create(scratch: &Path) -> std::io::Result<IdMap> {
        Ok(IdMap {
            near: Vec::new(),
            far: tempfile::tempfile_in(scratch)?,
            far_used: false,
            other: HashMap::new(),
        })
    }

    pub fn insert(&mut self, old: &str, new: i64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let n = match IdSet::numeric(old) {
            Some(n) if n < MAX_SLOT => n,
            _ => {
                self.other.insert(old.to_string(), new);
                return Ok(());
            }
        };
        match u32::try_from(new + 1) {
            Ok(slot) if n < NEAR_SLOTS && slot != u32::MAX => {
                if n >= self.near.len() {
                    // Grow by powers of two, never past NEAR_SLOTS.
                    let len = (n + 1).next_power_of_two().min(NEAR_SLOTS);
                    self.near.reserve_exact(len - self.near.len());
                    self.near.resize(len, 0);
                }
                self.near[n] = slot;
                Ok(())
            }
            _ => {
                self.far_used = true;
                self.far
                    .write_all_at(&(new + 1).to_le_bytes(), n as u64 * 8)
            }
        }
    }

    pub fn get(&self, old: &str) -> std::io::Result<Option<i64>> {
        use std::os::unix::fs::FileExt;
        let n = match IdSet::numeric(old) {
            Some(n) if n < MAX_SLOT => n,
            _ => return Ok(self.other.get(old).copied()),
        };
        if let Some(&slot) = self.near.get(n).filter(|s| **s != 0) {
            return Ok(Some(i64::from(slot) - 1));
        }
        if !self.far_used {
            return Ok(None);
        }
        let mut slot = [0u8; 8];
        match self.far.read_exact_at(&mut slot, n as u64 * 8) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let stored = i64::from_le_bytes(slot);
        Ok((stored != 0).then(|| stored - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_holds_near_far_and_other_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = IdMap::create(dir.path()).unwrap();
        map.insert("4:db:7", 0).unwrap();
        map.insert("4:db:9", i64::from(u32::MAX) + 5).unwrap();
        map.insert(&format!("4:db:{}", NEAR_SLOTS + 3), 42).unwrap();
        map.insert("odd", 5).unwrap();
        assert_eq!(map.get("4:db:7").unwrap(), Some(0));
        assert_eq!(map.get("4:db:9").unwrap(), Some(i64::from(u32::MAX) + 5));
        assert_eq!(
            map.get(&format!("4:db:{}", NEAR_SLOTS + 3)).unwrap(),
            Some(42)
        );
        assert_eq!(map.get("odd").unwrap(), Some(5));
        assert_eq!(map.get("4:db:8").unwrap(), None);
        assert_eq!(map.get(&format!("4:db:{}", NEAR_SLOTS * 4)).unwrap(), None);
    }
}
