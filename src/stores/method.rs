//! The `Method` seam: how one store makes one kind of artifact. A store's
//! methods are an enum (also its command-line values); the manifest names
//! the method of each artifact, and that name is read here, once, into the
//! enum — everything after matches on the enum, never on the string.

use std::fmt::Debug;

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::service::Service;

pub trait Method: Copy + PartialEq + Debug + clap::ValueEnum + 'static {
    /// The store whose artifacts these are.
    const SERVICE: Service;

    /// What the store calls its methods in messages ("method", "format").
    const CALLED: &'static str = "method";

    /// The manifest's `method` for artifacts of this method (the tool, for
    /// PostgreSQL), as `docs/manifest.schema.json` lists it.
    fn manifest_method(self) -> &'static str;

    /// The value of [`Method::recorded`] for artifacts of this method.
    fn manifest_key(self) -> &'static str {
        self.manifest_method()
    }

    /// The field of an artifact's record that tells its method apart (the
    /// `method`; PostgreSQL's two formats are told apart by `format`).
    fn recorded(record: &ArtifactRecord) -> &str {
        &record.method
    }

    /// The method of the artifact `record` describes.
    fn of(record: &ArtifactRecord) -> Result<Self> {
        let key = Self::recorded(record);
        Self::value_variants()
            .iter()
            .copied()
            .find(|method| method.manifest_key() == key)
            .ok_or_else(|| {
                Error::failure(
                    "verify",
                    format!("unknown {} {} '{key}'", Self::SERVICE, Self::CALLED),
                )
                .service(Self::SERVICE)
                .hint("the backup names a method this itbackup does not know: restore it with the itbackup version that took it (the manifest's tool field)")
            })
    }
}

/// Every method of `M` is read back from what the manifest records for it,
/// and named by the manifest's schema; an unknown name is refused. (Run for
/// every registered store by the registry's test.)
#[cfg(test)]
pub fn check_methods<M: Method>() -> std::result::Result<(), String> {
    let schema = include_str!("../../docs/manifest.schema.json");
    for method in M::value_variants() {
        let mut record = ArtifactRecord::begun(String::new(), String::new());
        record.method = method.manifest_method().into();
        record.format = method.manifest_key().into();
        let read = M::of(&record).map_err(|e| e.to_string())?;
        if read != *method {
            return Err(format!("{method:?} is read back as {read:?}"));
        }
        if !schema.contains(&format!("\"{}\"", method.manifest_method())) {
            return Err(format!(
                "docs/manifest.schema.json does not list the method \"{}\"",
                method.manifest_method()
            ));
        }
    }
    let mut unknown = ArtifactRecord::begun(String::new(), String::new());
    unknown.method = "tape".into();
    unknown.format = "tape".into();
    match M::of(&unknown) {
        Err(e) if e.message.contains("'tape'") && e.service == Some(M::SERVICE) => Ok(()),
        other => Err(format!("an unknown method is not refused: {other:?}")),
    }
}
