//! Packing a directory tree into a compressed tar artifact, and unpacking one
//! without trusting it: every entry's path is checked before anything is
//! written, and only plain files and directories are accepted, so a crafted
//! archive cannot escape its destination through `../`, an absolute path or a link.

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::artifact::{self, ArtifactSource, Artifacts, PendingArtifact};

/// Compression of packed archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveCompression {
    Gzip,
    Zstd,
}

impl ArchiveCompression {
    pub fn extension(self) -> &'static str {
        match self {
            ArchiveCompression::Gzip => "tar.gz",
            ArchiveCompression::Zstd => "tar.zst",
        }
    }

    /// The compression of an archive, from its file name.
    pub fn from_file_name(name: &str) -> Option<Self> {
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(ArchiveCompression::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(ArchiveCompression::Zstd)
        } else {
            None
        }
    }
}

/// A packed archive, not yet committed.
pub struct PackedArchive {
    pub pending: PendingArtifact,
    /// Size of the uncompressed tar stream: what unpacking it writes, plus
    /// its headers, so a restore can check the destination's free space first.
    pub tar_bytes: u64,
}

/// Pack the contents of `source` (paths relative to it) into `dir/name`.
pub fn pack_dir(
    source: &Path,
    artifacts: &Artifacts,
    name: &str,
    compression: ArchiveCompression,
) -> io::Result<PackedArchive> {
    write_compressed(artifacts, name, compression, |out| {
        append_tree(tar::Builder::new(out), source).map(|_| ())
    })
}

/// Compress a tar stream made elsewhere (a container's `tar -cf -`) into `dir/name`.
pub fn pack_stream(
    tar_stream: &mut dyn Read,
    artifacts: &Artifacts,
    name: &str,
    compression: ArchiveCompression,
) -> io::Result<PackedArchive> {
    write_compressed(artifacts, name, compression, |out| {
        io::copy(tar_stream, out).map(|_| ())
    })
}

/// `dir/name` as a compressed, hashed artifact whose content `fill` writes.
fn write_compressed(
    artifacts: &Artifacts,
    name: &str,
    compression: ArchiveCompression,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PackedArchive> {
    let writer = artifacts.create(name)?;
    let buffered = BufWriter::with_capacity(artifact::CHUNK, writer);
    let (writer, tar_bytes) = match compression {
        ArchiveCompression::Gzip => {
            // Level 1: snapshot segments are compressed already; more effort buys little.
            let mut encoder = flate2::write::GzEncoder::new(buffered, flate2::Compression::fast());
            let tar_bytes = fill_counted(&mut encoder, fill)?;
            (encoder.finish()?, tar_bytes)
        }
        ArchiveCompression::Zstd => {
            let mut encoder = zstd::Encoder::new(buffered, 3)?;
            let tar_bytes = fill_counted(&mut encoder, fill)?;
            (encoder.finish()?, tar_bytes)
        }
    };
    Ok(PackedArchive {
        pending: writer.into_inner().map_err(|e| e.into_error())?.finish()?,
        tar_bytes,
    })
}

/// Run `fill` on `out`, returning how many bytes it wrote.
fn fill_counted(
    out: &mut dyn Write,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let mut counted = CountingWriter {
        inner: out,
        bytes: 0,
    };
    fill(&mut counted)?;
    Ok(counted.bytes)
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn append_tree<W: Write>(mut builder: tar::Builder<W>, source: &Path) -> io::Result<W> {
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", source)?;
    builder.into_inner()
}

/// A decompressing reader over an archive file.
pub fn open(source: &ArtifactSource, compression: ArchiveCompression) -> io::Result<Box<dyn Read>> {
    let file = source.open()?;
    Ok(match compression {
        ArchiveCompression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        ArchiveCompression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
    })
}

/// An error of the tar reader, told without the archive's bytes: its
/// messages quote header fields, which for a file that is not a tar at all
/// (a forged artifact, `/etc/passwd`) are that file's first bytes. Errors of
/// the system and of the decompressor (which quote nothing) pass unchanged.
pub fn without_content(err: io::Error) -> io::Error {
    if err.raw_os_error().is_some() {
        return err;
    }
    let said = match err.kind() {
        io::ErrorKind::UnexpectedEof => "the archive ends early",
        _ if ["when getting", "numeric field", "header", "path"]
            .iter()
            .any(|quoting| err.to_string().contains(quoting)) =>
        {
            "a malformed tar header (the file is not a tar archive, or is damaged)"
        }
        _ => return err,
    };
    io::Error::new(io::ErrorKind::InvalidData, said)
}

/// Why an entry may not be unpacked, if it may not: a path that climbs out
/// or is absolute, or anything but a file or a directory.
pub fn refuse(entry: &tar::Entry<'_, impl Read>) -> Option<String> {
    let path = match entry.path() {
        Ok(p) => p.into_owned(),
        Err(e) => return Some(format!("unreadable entry path: {e}")),
    };
    let shown = path.display().to_string();
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Some(format!("'{shown}' climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Some(format!("'{shown}' is an absolute path"))
            }
        }
    }
    match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Directory => None,
        other => Some(format!(
            "'{shown}' is a {other:?} entry; only files and directories are accepted"
        )),
    }
}

/// Read the whole archive: every entry checked and every byte decompressed.
/// Returns the number of files.
pub fn check(reader: impl Read) -> io::Result<u64> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    for entry in archive.entries().map_err(without_content)? {
        let mut entry = entry.map_err(without_content)?;
        if let Some(reason) = refuse(&entry) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        io::copy(&mut entry, &mut io::sink())?;
        if entry.header().entry_type() == tar::EntryType::Regular {
            files += 1;
        }
    }
    // Anything after the end-of-archive blocks must still decompress cleanly.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    Ok(files)
}

/// Unpack into `dest` (created 0700). Call [`check`] on the same file first: this
/// refuses bad entries too, but only [`check`] refuses them before writing anything.
pub fn unpack(reader: impl Read, dest: &Path) -> io::Result<Vec<PathBuf>> {
    artifact::create_private_dir(dest)?;
    let mut archive = tar::Archive::new(reader);
    let mut written = Vec::new();
    for entry in archive.entries().map_err(without_content)? {
        let mut entry = entry.map_err(without_content)?;
        if let Some(reason) = refuse(&entry) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        let relative = entry.path()?.into_owned();
        let target = dest.join(&relative);
        if entry.header().entry_type() == tar::EntryType::Directory {
            artifact::create_private_dir(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                artifact::create_private_dir(parent)?;
            }
            let mut out = artifact::create_private_file(&target)?;
            io::copy(&mut entry, &mut out)?;
        }
        written.push(target);
    }
    Ok(written)
}

/// Give a tree to the owner of `like` (so a server running as another user can read
/// what we unpacked as root). Does nothing when we are not root.
pub fn chown_tree_like(tree: &Path, like: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let meta = fs::metadata(like)?;
    let (uid, gid) = (meta.uid(), meta.gid());
    fn walk(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        if path.is_dir() {
            for entry in fs::read_dir(path)? {
                walk(&entry?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(tree, uid, gid)
}

/// Build a tar in memory for tests of the refusal rules.
#[cfg(test)]
fn crafted(path: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut data = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut data);
        let mut header = tar::Header::new_gnu();
        // Write the raw name so that '../' and absolute paths survive.
        header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(if kind == tar::EntryType::Regular {
            3
        } else {
            0
        });
        header.set_entry_type(kind);
        header.set_mode(0o600);
        header.set_cksum();
        let body: &[u8] = if kind == tar::EntryType::Regular {
            b"abc"
        } else {
            b""
        };
        builder.append(&header, body).unwrap();
        builder.finish().unwrap();
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escaping_paths_and_links_before_writing() {
        for (path, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/etc/evil", tar::EntryType::Regular),
            ("a/../../evil", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
        ] {
            let data = crafted(path, kind);
            let err = check(&data[..]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{path}");
            let dest = tempfile::tempdir().unwrap();
            assert!(unpack(&data[..], &dest.path().join("x")).is_err());
        }
        let data = crafted("ok/file", tar::EntryType::Regular);
        assert_eq!(check(&data[..]).unwrap(), 1);
    }

    #[test]
    fn packs_and_unpacks_a_tree() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("indices/a")).unwrap();
        fs::write(src.path().join("indices/a/seg"), b"data").unwrap();
        fs::write(src.path().join("index-0"), b"meta").unwrap();
        let out = tempfile::tempdir().unwrap();
        for compression in [ArchiveCompression::Gzip, ArchiveCompression::Zstd] {
            let name = format!("x.{}", compression.extension());
            let packed = pack_dir(
                src.path(),
                &Artifacts::in_dir(out.path()),
                &name,
                compression,
            )
            .unwrap();
            let pending = packed.pending;
            let decompressed = io::copy(
                &mut open(&ArtifactSource::File(pending.partial.clone()), compression).unwrap(),
                &mut io::sink(),
            )
            .unwrap();
            assert_eq!(packed.tar_bytes, decompressed);
            assert_eq!(
                check(open(&ArtifactSource::File(pending.partial.clone()), compression).unwrap())
                    .unwrap(),
                2
            );
            let dest = out
                .path()
                .join(format!("unpacked-{}", compression.extension()));
            unpack(
                open(&ArtifactSource::File(pending.partial.clone()), compression).unwrap(),
                &dest,
            )
            .unwrap();
            assert_eq!(fs::read(dest.join("indices/a/seg")).unwrap(), b"data");
        }
    }
}
