//! Encryption at rest with age: artifacts are sealed to public recipients
//! when a backup is taken and opened with a private identity before anything
//! is restored.
//!
//! A store always writes its artifact in the clear first (an owner-only
//! `*.partial` file on the host that already holds the data); sealing then
//! streams it through age into `<artifact>.age` and removes the clear copy
//! before the backup becomes visible. What leaves the host is only ever the
//! sealed file. The manifest records both checksums — of the sealed bytes (what
//! `verify` and a remote copy can check without a key) and of the plaintext
//! (what decryption must reproduce) — and the recipients, which are public.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;

use crate::artifact::{
    self, ArtifactSource, ArtifactWriter, Digest256, HashingReader, PendingArtifact, CHUNK,
};
use crate::error::{Error, Kind, Result};
use crate::manifest::{ArtifactRecord, Encryption};
use crate::service::Service;

/// File name suffix of a sealed artifact.
pub const SEALED_SUFFIX: &str = ".age";

/// The public keys backups are sealed to.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    /// As given (age `age1…` or SSH public keys): public, kept in the manifest.
    pub names: Vec<String>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Recipients {
    /// Parse recipients: each entry is an age public key (`age1…`), an SSH
    /// public key line (`ssh-ed25519 …`, `ssh-rsa …`) or the path of a file
    /// holding such lines (as `age -R` takes).
    pub fn parse(entries: &[String]) -> Result<Option<Recipients>> {
        let mut keys: Vec<Box<dyn age::Recipient + Send + Sync>> = Vec::new();
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let lines: Vec<String> = if looks_like_key(entry) {
                vec![entry.to_string()]
            } else {
                fs::read_to_string(entry)
                    .map_err(|e| {
                        Error::usage(format!(
                            "encryption recipient '{entry}' is neither an age/SSH public key nor a readable file: {e}"
                        ))
                    })?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect()
            };
            for line in lines {
                keys.push(parse_recipient(&line)?);
                names.push(line);
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Recipients { keys, names }))
    }
}

fn looks_like_key(entry: &str) -> bool {
    entry.starts_with("age1") || entry.starts_with("ssh-")
}

fn parse_recipient(line: &str) -> Result<Box<dyn age::Recipient + Send + Sync>> {
    if let Ok(key) = line.parse::<age::x25519::Recipient>() {
        return Ok(Box::new(key));
    }
    if let Ok(key) = line.parse::<age::ssh::Recipient>() {
        return Ok(Box::new(key));
    }
    let shown: String = line.chars().take(24).collect();
    Err(Error::usage(format!(
        "'{shown}…' is not an age recipient (age1…) or a supported SSH public key (ssh-ed25519, ssh-rsa)"
    )))
}

/// The private keys that open sealed artifacts.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    source: PathBuf,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        write!(f, "Identities({})", self.source.display())
    }
}

impl Identities {
    /// Read an age identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen`
    /// writes) or an unencrypted SSH private key.
    pub fn load(path: &Path) -> Result<Identities> {
        let unreadable = |e: io::Error| {
            Error::usage(format!("cannot read identity file {}: {e}", path.display()))
        };
        let text = fs::read(path).map_err(unreadable)?;
        if let Ok(file) = age::IdentityFile::from_buffer(&text[..]) {
            let keys = file
                .into_identities()
                .map_err(|e| Error::usage(format!("identity file {}: {e}", path.display())))?;
            if !keys.is_empty() {
                return Ok(Identities {
                    keys,
                    source: path.to_path_buf(),
                });
            }
        }
        match age::ssh::Identity::from_buffer(&text[..], Some(path.display().to_string())) {
            Ok(age::ssh::Identity::Unencrypted(key)) => Ok(Identities {
                keys: vec![Box::new(age::ssh::Identity::Unencrypted(key))],
                source: path.to_path_buf(),
            }),
            Ok(age::ssh::Identity::Encrypted(_)) => Err(Error::usage(format!(
                "the SSH key {} is passphrase-protected; give an unencrypted key or an age identity (age-keygen)",
                path.display()
            ))),
            _ => Err(Error::usage(format!(
                "{} holds no age identity (AGE-SECRET-KEY-1…) and no supported SSH private key",
                path.display()
            ))),
        }
    }
}

/// An age writer that seals what is written through it to `recipients` into
/// `out`; its `finish` must be called to write the last chunk.
pub fn encrypt_to<W: Write>(
    recipients: &Recipients,
    out: W,
) -> io::Result<age::stream::StreamWriter<W>> {
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .keys
            .iter()
            .map(|k| k.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| io::Error::other(format!("age: {e}")))?;
    encryptor.wrap_output(out)
}

/// Why a sealed file could not be opened with `identities`: not an age file
/// at all (damaged), or none of the keys it was sealed to.
#[derive(Debug)]
pub enum OpenError {
    NotAge(String),
    WrongKey(String),
}

/// A reader of the plaintext of the age file `input`, opened with `identities`.
pub fn decrypt_with<R: io::BufRead>(
    identities: &Identities,
    input: R,
) -> Result<age::stream::StreamReader<R>, OpenError> {
    let decryptor =
        age::Decryptor::new_buffered(input).map_err(|e| OpenError::NotAge(e.to_string()))?;
    decryptor
        .decrypt(
            identities
                .keys
                .iter()
                .map(|k| k.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| OpenError::WrongKey(e.to_string()))
}

impl Identities {
    /// The identity file the keys came from (for messages; never the keys).
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Seal a clear artifact to `recipients`: `<name>.age.partial` is written next
/// to it, the clear file is removed, and the record describes the sealed file.
pub fn seal(
    pending: PendingArtifact,
    record: &mut ArtifactRecord,
    recipients: &Recipients,
) -> io::Result<PendingArtifact> {
    let dir = pending
        .partial
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let sealed_name = format!("{}{SEALED_SUFFIX}", record.file);
    let writer = ArtifactWriter::create(&dir, &sealed_name)?;
    let mut sealer = encrypt_to(recipients, io::BufWriter::with_capacity(CHUNK, writer))?;
    let mut clear = HashingReader::new(artifact::open_buffered(&pending.partial)?);
    io::copy(&mut clear, &mut sealer)?;
    let mut buffered = sealer.finish()?;
    buffered.flush()?;
    let sealed = buffered
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()?;
    let plain = clear.digest();
    if plain != pending.digest {
        return Err(io::Error::other(format!(
            "{} changed while it was being sealed",
            pending.partial.display()
        )));
    }
    pending.discard();
    describe_sealed(record, recipients, plain, sealed_name, &sealed.digest);
    Ok(sealed)
}

/// The record of an artifact sealed to `recipients`: the stored file and
/// its digest, and the plaintext's digest (sealed here, or on its way into a
/// repository by a streaming backup).
pub fn describe_sealed(
    record: &mut ArtifactRecord,
    recipients: &Recipients,
    plain: Digest256,
    sealed_file: String,
    sealed: &Digest256,
) {
    record.encryption = Some(Encryption {
        scheme: "age".into(),
        recipients: recipients.names.clone(),
        plaintext_sha256: plain.sha256,
        plaintext_bytes: plain.bytes,
    });
    record.file = sealed_file;
    record.sha256 = sealed.sha256.clone();
    record.bytes = sealed.bytes;
}

/// Where a store finds an artifact it can read: the backup's own file, or the
/// plaintext opened from a sealed one into a scratch directory.
#[derive(Debug, Clone)]
pub struct OpenedArtifact {
    pub source: ArtifactSource,
    /// The record as the store knows it: file name, checksum and size of the plaintext.
    pub record: ArtifactRecord,
}

/// Make a (checksum-verified) artifact readable by its store. A sealed one is
/// decrypted into `scratch` and its plaintext checked against the manifest.
pub fn open(
    service: Service,
    path: &Path,
    record: &ArtifactRecord,
    identities: Option<&Identities>,
    scratch: &Path,
) -> Result<OpenedArtifact> {
    if record.encryption.is_none() {
        return Ok(OpenedArtifact {
            source: ArtifactSource::File(path.to_path_buf()),
            record: record.clone(),
        });
    };
    let step = "decrypt artifact";
    let identities = identities_for(service, record, identities)?;
    let plain = plain_record(record);
    let plain_name = plain.file.clone();
    let out = scratch.join(&plain_name);
    let input = BufReader::with_capacity(
        CHUNK,
        artifact::open_regular(path)
            .map_err(|e| crate::error::io_error(Some(service), step, path.display(), e))?,
    );
    let mut reader = decrypt_artifact(service, record, identities, input)?;
    let written = (|| -> io::Result<Digest256> {
        let mut writer = ArtifactWriter::create(scratch, &plain_name)?;
        io::copy(&mut reader, &mut writer)?;
        let pending = writer.finish()?;
        pending.commit()?;
        Ok(pending.digest)
    })()
    .map_err(|e| {
        // Decrypting fails on a damaged artifact; writing the plaintext on a full disk.
        let kind = match crate::error::io_kind(&e) {
            Kind::NoSpace => Kind::NoSpace,
            _ => Kind::DamagedBackup,
        };
        Error::new(kind, step, format!("{}: {e}", record.file))
            .service(service)
            .hint("the sealed artifact is damaged or truncated; use another backup")
    })?;
    if written.sha256 != plain.sha256 || written.bytes != plain.bytes {
        return Err(Error::damaged(
            step,
            format!(
                "the plaintext of {} does not match its checksum in the manifest",
                record.file
            ),
        )
        .service(service)
        .hint("the artifact was replaced or damaged; use another backup"));
    }
    Ok(OpenedArtifact {
        source: ArtifactSource::File(out),
        record: plain,
    })
}

/// The keys that open the sealed artifact of `record`: a usage error names
/// the missing `--identity`.
pub fn identities_for<'a>(
    service: Service,
    record: &ArtifactRecord,
    identities: Option<&'a Identities>,
) -> Result<&'a Identities> {
    identities.ok_or_else(|| {
        Error::new(
            Kind::Usage,
            "decrypt artifact",
            format!("{} is encrypted (age)", record.file),
        )
        .service(service)
        .hint("give the private key with --identity FILE or IT_AGE_IDENTITY")
    })
}

/// The record of a sealed artifact as its store reads it: the plaintext's
/// file name, checksum and size (a clear record is returned as it is).
pub fn plain_record(record: &ArtifactRecord) -> ArtifactRecord {
    let mut plain = record.clone();
    if let Some(encryption) = plain.encryption.take() {
        plain.file = record
            .file
            .strip_suffix(SEALED_SUFFIX)
            .unwrap_or(&record.file)
            .to_string();
        plain.sha256 = encryption.plaintext_sha256;
        plain.bytes = encryption.plaintext_bytes;
    }
    plain
}

/// The plaintext of the sealed artifact of `record` read from `input`, with
/// the errors an operator acts on: not an age file (damaged), or sealed to
/// other keys (authentication, naming the keys it was sealed to).
pub fn decrypt_artifact<R: io::BufRead>(
    service: Service,
    record: &ArtifactRecord,
    identities: &Identities,
    input: R,
) -> Result<age::stream::StreamReader<R>> {
    let step = "decrypt artifact";
    let recipients = record
        .encryption
        .as_ref()
        .map(|e| e.recipients.join(", "))
        .unwrap_or_default();
    decrypt_with(identities, input).map_err(|e| match e {
        OpenError::NotAge(e) => Error::damaged(
            step,
            format!("{} is not a readable age file: {e}", record.file),
        )
        .service(service),
        OpenError::WrongKey(e) => {
            Error::authentication(step, format!("cannot open {}: {e}", record.file))
                .service(service)
                .hint(format!(
                    "{} is not one of the keys it was sealed to ({recipients})",
                    identities.source.display(),
                ))
        }
    })
}

/// A fresh age identity and its recipient, as `age-keygen` makes them.
pub fn generate_identity() -> (String, String) {
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string().expose_secret().to_string();
    (secret, identity.to_public().to_string())
}

/// Write a new identity file (owner-only, never over an existing file) in
/// `age-keygen`'s format; returns its public recipient.
pub fn write_new_identity(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, recipient) = generate_identity();
    let created = jiff::Timestamp::now();
    let text = format!("# created: {created}\n# public key: {recipient}\n{secret}\n");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| crate::error::io_error(None, "write identity", path.display(), e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| crate::error::io_error(None, "write identity", path.display(), e))?;
    Ok(recipient)
}
