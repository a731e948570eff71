//! `--neo4j-load import`: a logical export loaded offline by `neo4j-admin
//! database import full`, many times faster than transactions.
//!
//! A logical restore replaces the graph anyway; where the server may be
//! stopped, the bulk importer writes the store files directly. In order:
//!
//! 1. `prepare` (nothing stopped or changed): stop and start commands
//!    configured, neo4j-admin present and of the server's version, then the
//!    verified export read once into CSV files in the restore's scratch
//!    directory (`import_csv.rs`), refused there if it has too many shapes.
//! 2. `restore`: the server stopped, `neo4j-admin database import full
//!    --overwrite-destination` run, the server started and its database
//!    online; the properties the CSV could not carry exactly set by Cypher
//!    (the fix-up), then the constraints and indexes created as the
//!    transactional load creates them (`load::create_schema`).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use neo4rs::{query, BoltType, Graph};

use super::import_csv::{CsvError, CsvSet, CsvWriter, Unsuitable, ARRAY_DELIMITER, FIX_KEY};
use super::load::create_schema;
use super::props_bolt::{special_cypher, PropsOf};
use super::{neo_error, quote, BATCH_BYTES, CHUNK_BYTES, MAX_LINE, SVC, TEMP_LABEL};
use crate::artifact::ArtifactSource;
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::{self, ToolCommand};
use crate::stores::neo4j::Neo4j;
use crate::stores::RestoreContext;
use crate::target::Target;

/// The CSV files of a prepared import, kept by the store between
/// `prepare_restore` and `restore`.
pub(in crate::stores::neo4j) struct PreparedImport {
    dir: PathBuf,
    csv: CsvSet,
}

/// The hint of every refusal: the other load needs none of this.
const USE_TRANSACTIONAL: &str = "nothing was stopped or changed; restore with --neo4j-load transactional (online, slower), which needs none of this";

impl Neo4j {
    /// The `--dry-run` steps of an import load.
    pub(in crate::stores::neo4j) fn plan_import_restore(
        &self,
        record: &ArtifactRecord,
    ) -> Vec<String> {
        let db = &self.settings.database;
        vec![
            format!("check that the server can be stopped and started and that {} is of its version", self.settings.admin),
            format!("read {} once into neo4j-admin CSV files (one per shape of properties, at most {}) in a scratch directory beside the backup", record.file, super::import_csv::MAX_GROUPS),
            self.plan_stop(),
            format!("{} database import full {db} --overwrite-destination=true --nodes=… --relationships=…: replaces database {db}", self.settings.admin),
            self.plan_start(),
            "set by Cypher the properties the CSV cannot carry exactly (empty strings and lists, …), remove the markers".into(),
            "create constraints and indexes, wait for them".into(),
        ]
    }

    /// Every check, and the CSV files, before the server is stopped.
    pub(in crate::stores::neo4j) async fn prepare_import_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.refuse_import_without_tools().await?;
        let dir = ctx.scratch.join("neo4j-import");
        let step = "write import files";
        std::fs::create_dir(&dir).map_err(|e| io_error(Some(SVC), step, dir.display(), e))?;
        let (artifact, into) = (ctx.artifact.clone(), dir.clone());
        let csv = crate::stores::blocking(SVC, move || write_csv(&artifact, &into)).await?;
        for (key, want) in [("nodes", csv.nodes), ("relationships", csv.relationships)] {
            if record.counts.get(key).is_some_and(|n| *n != want) {
                return Err(Error::damaged(
                    step,
                    format!(
                        "the manifest says {:?} {key}, the export holds {want}",
                        record.counts.get(key)
                    ),
                )
                .service(SVC));
            }
        }
        tracing::info!(service = %SVC, nodes = csv.nodes, relationships = csv.relationships,
            files = csv.node_files.len() + csv.relationship_files.len(), bytes = csv.bytes,
            fixups = csv.node_fixups + csv.relationship_fixups, "import files written");
        *self.prepared_import.lock().expect("not poisoned") = Some(PreparedImport { dir, csv });
        Ok(())
    }

    /// Refuse (usage, exit 2) what the import cannot run with, before
    /// anything is written or stopped.
    async fn refuse_import_without_tools(&self) -> Result<()> {
        let refuse = |message: String| Error::usage(message).service(SVC).hint(USE_TRANSACTIONAL);
        if let Target::Compose(_) = &self.target {
            return Err(refuse("--neo4j-load import runs neo4j-admin on this host, with the CSV files it writes here; in compose mode neo4j-admin runs in a container that cannot see them".into()));
        }
        if self.settings.stop_command.is_none() || self.settings.start_command.is_none() {
            return Err(refuse("--neo4j-load import needs the server stopped, and no way to stop and start it is configured (IT_NEO4J_STOP_CMD and IT_NEO4J_START_CMD, or stop_command/start_command under [neo4j])".into()));
        }
        let version = ToolCommand::new(self.settings.admin.clone()).arg("--version");
        let admin = crate::stores::blocking(SVC, move || {
            process::output_within(
                &version,
                SVC,
                "check neo4j-admin",
                process::SHORT_ANSWER_BOUND,
            )
        })
        .await
        .map_err(|e| {
            refuse(format!(
                "--neo4j-load import needs neo4j-admin ({}): {}",
                self.settings.admin, e.message
            ))
        })?;
        let (server, _) = self.server_version().await?;
        let admin = admin
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        if admin != server {
            return Err(refuse(format!("neo4j-admin {} ({admin}) is not of the server's version {server}: the store files it writes must be the server's", self.settings.admin)));
        }
        Ok(())
    }

    /// Stop, import, start; then the fix-ups and the schema.
    pub(in crate::stores::neo4j) async fn restore_import(&self) -> Result<()> {
        let prepared = self.prepared_import.lock().expect("not poisoned").take();
        let Some(PreparedImport { dir, csv }) = prepared else {
            return Err(
                Error::failure("restore", "the import files were not prepared").service(SVC),
            );
        };
        let cmd = self.import_command(&dir, &csv);
        let step = "import (neo4j-admin database import full)";
        let import = crate::stores::blocking(SVC, move || {
            process::output(&cmd, SVC, step).map(|_| ()).map_err(|e| {
                e.hint("the database was being replaced: it may now be empty or half-imported (the server was started again). Fix what neo4j-admin reports above and run the restore again, or restore with --neo4j-load transactional")
            })
        });
        self.with_server_stopped("restore (neo4j-admin database import)", import)
            .await?;
        tracing::info!(service = %SVC, "imported; the server runs again");
        let graph = self.graph().await?;
        self.apply_fixups(&graph, &csv.node_fixup_file, csv.node_fixups, false)
            .await?;
        self.apply_fixups(
            &graph,
            &csv.relationship_fixup_file,
            csv.relationship_fixups,
            true,
        )
        .await?;
        create_schema(&graph, &csv.schema).await?;
        // The scratch directory goes with the restore; the CSV files (the
        // graph's size again) go now.
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// `neo4j-admin database import full`, run in `dir` with the files'
    /// names relative to it (neo4j-admin reads a file name as a pattern).
    fn import_command(&self, dir: &Path, csv: &CsvSet) -> ToolCommand {
        let name = |path: &PathBuf| {
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        // It must hold the longest cell; 4 MiB is neo4j-admin's default.
        let buffer = (csv.longest_cell + 64 * 1024)
            .next_power_of_two()
            .max(4 << 20);
        let mut cmd = self
            .admin()
            .current_dir(dir)
            .args([
                "database",
                "import",
                "full",
                self.settings.database.as_str(),
            ])
            .args([
                "--overwrite-destination=true".to_string(),
                "--id-type=string".into(),
                "--delimiter=,".into(),
                "--quote=\"".into(),
                format!("--array-delimiter=U+{:04X}", ARRAY_DELIMITER as u32),
                "--ignore-empty-strings=false".into(),
                "--trim-strings=false".into(),
                "--legacy-style-quoting=false".into(),
                // Any bad entry fails the import: none may be skipped quietly.
                "--bad-tolerance=0".into(),
                "--skip-bad-relationships=false".into(),
                "--skip-duplicate-nodes=false".into(),
                "--strict=true".into(),
                format!("--read-buffer-size={buffer}"),
                format!("--report-file={}", dir.join("import.report").display()),
                format!("--multiline-fields={}", csv.multiline),
            ]);
        for file in &csv.node_files {
            cmd = cmd.arg(format!("--nodes={}", name(file)));
        }
        for file in &csv.relationship_files {
            cmd = cmd.arg(format!("--relationships={}", name(file)));
        }
        cmd
    }

    /// Set the properties of the fix-up file on the entities the import
    /// marked, as the transactional load sets them, and remove the markers.
    async fn apply_fixups(
        &self,
        graph: &Graph,
        file: &Path,
        count: u64,
        relationships: bool,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        tracing::info!(service = %SVC, count, relationships, "setting the properties the CSV files could not carry");
        let step = "fix up properties";
        let ids = self.marked(graph, count, relationships).await?;
        let (find, unmark) = if relationships {
            (
                "MATCH ()-[x]->() WHERE id(x) = row[0]",
                format!("REMOVE x.{FIX_KEY}"),
            )
        } else {
            (
                "MATCH (x) WHERE id(x) = row[0]",
                format!("REMOVE x:{}, x.{FIX_KEY}", quote(TEMP_LABEL)),
            )
        };
        let cypher = format!(
            "UNWIND $rows AS row {find} SET x += row[1] FOREACH (s IN row[2] | SET x[s[0]] = {}) {unmark}",
            special_cypher()
        );
        let reader =
            std::fs::File::open(file).map_err(|e| io_error(Some(SVC), step, file.display(), e))?;
        let mut rows = Vec::new();
        let mut bytes = 0;
        for (number, line) in std::io::BufReader::new(reader).lines().enumerate() {
            let line = line.map_err(|e| io_error(Some(SVC), step, file.display(), e))?;
            let props = serde_json::from_str::<PropsOf>(&line)
                .map_err(|e| {
                    Error::failure(step, format!("a fix-up line does not decode: {e}")).service(SVC)
                })?
                .props
                .unwrap_or_default();
            bytes += line.len();
            rows.push(BoltType::List(neo4rs::BoltList::from(vec![
                BoltType::from(ids[number]),
                BoltType::Map(props.direct),
                BoltType::List(neo4rs::BoltList::from(props.special)),
            ])));
            if rows.len() >= self.settings.batch_size || bytes >= BATCH_BYTES {
                run_rows(graph, &cypher, std::mem::take(&mut rows)).await?;
                bytes = 0;
            }
        }
        run_rows(graph, &cypher, rows).await
    }

    /// The internal ids of the marked entities, by fix-up number.
    async fn marked(&self, graph: &Graph, count: u64, relationships: bool) -> Result<Vec<i64>> {
        let step = "fix up properties";
        let cypher = if relationships {
            format!("MATCH ()-[x]->() WHERE x.{FIX_KEY} IS NOT NULL RETURN x.{FIX_KEY} AS f, id(x) AS i")
        } else {
            format!(
                "MATCH (x:{}) RETURN x.{FIX_KEY} AS f, id(x) AS i",
                quote(TEMP_LABEL)
            )
        };
        let mut ids = vec![-1i64; count as usize];
        let mut stream = self.bounded(step, graph.execute(query(&cypher))).await?;
        // Both are never negative: neo4rs 0.8's misreading of -16..-1 cannot touch them.
        while let Some(row) = self.bounded(step, stream.next()).await? {
            let (Ok(number), Ok(id)) = (row.get::<i64>("f"), row.get::<i64>("i")) else {
                continue;
            };
            if let Some(slot) = usize::try_from(number).ok().and_then(|n| ids.get_mut(n)) {
                *slot = id;
            }
        }
        if let Some(missing) = ids.iter().position(|id| *id < 0) {
            return Err(Error::failure(step, format!("entity {missing} of the fix-up is not in the imported graph")).service(SVC)
                .hint("run the restore again; if it fails the same way, restore with --neo4j-load transactional"));
        }
        Ok(ids)
    }
}

/// One batch of fix-up rows in one transaction.
async fn run_rows(graph: &Graph, cypher: &str, rows: Vec<BoltType>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows = BoltType::List(neo4rs::BoltList::from(rows));
    graph
        .run(query(cypher).param("rows", rows))
        .await
        .map_err(|e| neo_error("fix up properties", e))
}

/// The export read once (from its file, or as it streams from the
/// repository) into CSV files in `dir`.
fn write_csv(artifact: &ArtifactSource, dir: &Path) -> Result<CsvSet> {
    let step = "write import files";
    let mut writer =
        CsvWriter::create(dir).map_err(|e| io_error(Some(SVC), step, dir.display(), e))?;
    let mut failed: Option<Error> = None;
    crate::ndjson::read_chunks(artifact, SVC, CHUNK_BYTES, MAX_LINE, |chunk| {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Err(e) = writer.line(line) {
                failed = Some(match e {
                    CsvError::Unsuitable(Unsuitable(why)) => Error::usage(format!(
                        "--neo4j-load import cannot load this export: {why}"
                    ))
                    .service(SVC)
                    .hint(USE_TRANSACTIONAL),
                    CsvError::Io(e) => io_error(Some(SVC), step, dir.display(), e),
                    CsvError::Damaged(why) => Error::damaged(step, why)
                        .service(SVC)
                        .hint("the artifact is damaged; use another backup"),
                });
                return false;
            }
        }
        true
    });
    if let Some(e) = failed {
        return Err(e);
    }
    writer
        .finish()
        .map_err(|e| io_error(Some(SVC), step, dir.display(), e))
}
