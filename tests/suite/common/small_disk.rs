//! A small disk for the tests that fill one: a tmpfs mount (the tests run
//! as root, like CI on this machine).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a directory, unmounted on drop.
pub struct SmallDisk {
    path: PathBuf,
    /// The directory it was mounted on, when the test made it.
    _made: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// On a fresh directory, for root only.
    pub fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("itbackup-small-disk-")
            .tempdir()
            .expect("temp dir");
        let mut disk = SmallDisk::mount_over(dir.path(), bytes, "uid=0,gid=0,mode=0700");
        disk._made = Some(dir);
        disk
    }

    /// Over an existing directory (hiding what it holds until unmounted).
    pub fn mount_over(dir: &Path, bytes: u64, options: &str) -> SmallDisk {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},{options}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root, as in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            path: dir.to_path_buf(),
            _made: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Take all but `keep` bytes of the free space with a filler file.
    pub fn fill_leaving(&self, keep: u64) {
        let take = self.free().saturating_sub(keep);
        let mut filler = fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0x5au8; 4096];
        let mut written = 0;
        while written + 4096 <= take {
            filler.write_all(&block).unwrap();
            written += 4096;
        }
        filler.sync_all().unwrap();
    }

    /// Every file on the disk but the backup root's lock file (`.itbackup.lock`),
    /// for "nothing was left behind" checks.
    pub fn files_but_the_lock(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(self.path(), &mut files);
        files.retain(|p| p.file_name().unwrap() != ".itbackup.lock");
        files
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
