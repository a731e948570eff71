//! Where a store's own tools run: on this host (`Local`), or inside the
//! store's container of a Docker Compose stack (`Compose`), as the runbook's
//! scripts do. Network clients (SQL inventory, HTTP, Bolt) are the same either way.
//!
//! In compose mode every tool streams through `docker compose exec -T`'s
//! stdin/stdout — no temporary files inside containers, no `docker cp` — and
//! secrets are handed over as `-e NAME` without a value, so docker takes them
//! from its own environment and they never appear in any argv.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::process::ToolCommand;
use crate::service::Service;

#[derive(Debug, Clone, Default)]
pub enum Target {
    #[default]
    Local,
    Compose(Compose),
}

/// A Docker Compose stack: its files, project and service names.
#[derive(Debug, Clone)]
pub struct Compose {
    /// The docker binary (`IT_DOCKER`, default `docker`).
    pub docker: String,
    pub files: Vec<PathBuf>,
    pub project: Option<String>,
    /// Compose service of each store (default: the store's own name).
    pub services: BTreeMap<Service, String>,
}

impl Compose {
    /// `IT_COMPOSE_FILES` separates files with `:` or `,`.
    pub fn parse_files(list: &str) -> Vec<PathBuf> {
        list.split([':', ','])
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    pub fn service_name(&self, service: Service) -> &str {
        self.services
            .get(&service)
            .map(String::as_str)
            .unwrap_or(service.as_str())
    }

    /// `docker compose [-f F]... [-p P]`
    fn compose(&self) -> ToolCommand {
        let mut cmd = ToolCommand::new(self.docker.clone()).arg("compose");
        for file in &self.files {
            cmd = cmd.arg("-f").arg(file);
        }
        if let Some(project) = &self.project {
            cmd = cmd.args(["-p", project.as_str()]);
        }
        cmd
    }

    /// Hand `tool` over to docker: its environment stays on docker's side and
    /// is passed in by name (`-e NAME`), its program and arguments follow `head`.
    fn wrap(&self, head: ToolCommand, service: Service, tool: ToolCommand) -> ToolCommand {
        let mut cmd = head;
        let names: Vec<String> = tool.env_names().map(str::to_string).collect();
        for name in &names {
            cmd = cmd.args(["-e", name.as_str()]);
        }
        cmd = cmd
            .arg(self.service_name(service))
            .arg(tool.program.clone())
            .args(tool.args.iter().cloned());
        cmd.with_env_of(&tool)
    }

    /// `docker compose … exec -T [-e NAME]… <service> <tool>`: in the running container.
    pub fn exec(&self, service: Service, tool: ToolCommand) -> ToolCommand {
        self.wrap(self.compose().args(["exec", "-T"]), service, tool)
    }

    /// `docker compose … run --rm -T --no-deps [-e NAME]… <service> <tool>`: in a
    /// fresh container of the service (its volumes, while the service is stopped).
    pub fn run(&self, service: Service, tool: ToolCommand) -> ToolCommand {
        self.wrap(
            self.compose().args(["run", "--rm", "-T", "--no-deps"]),
            service,
            tool,
        )
    }

    pub fn stop(&self, service: Service) -> ToolCommand {
        self.compose().arg("stop").arg(self.service_name(service))
    }

    pub fn start(&self, service: Service) -> ToolCommand {
        self.compose().arg("start").arg(self.service_name(service))
    }
}

impl Target {
    /// `tool` as it runs for `service`: unchanged locally, in its container otherwise.
    pub fn exec(&self, service: Service, tool: ToolCommand) -> ToolCommand {
        match self {
            Target::Local => tool,
            Target::Compose(compose) => compose.exec(service, tool),
        }
    }

    pub fn compose(&self) -> Option<&Compose> {
        match self {
            Target::Local => None,
            Target::Compose(compose) => Some(compose),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn stack() -> Compose {
        Compose {
            docker: "docker".into(),
            files: Compose::parse_files("base.yml:override.yml,extra.yml"),
            project: Some("infoterminal".into()),
            services: [(Service::Postgres, "db".to_string())].into(),
        }
    }

    #[test]
    fn exec_honours_files_project_and_service_names_and_keeps_secrets_out_of_argv() {
        let tool = ToolCommand::new("pg_dump")
            .env("PGUSER", "postgres")
            .secret_env("PGPASSWORD", &Secret::new("s3cret"))
            .args(["-Fc", "-d", "shop"]);
        let cmd = stack().exec(Service::Postgres, tool);
        assert_eq!(
            cmd.to_string(),
            "PGUSER=postgres PGPASSWORD=*** docker compose -f base.yml -f override.yml -f extra.yml \
             -p infoterminal exec -T -e PGUSER -e PGPASSWORD db pg_dump -Fc -d shop"
        );
        assert!(cmd
            .args
            .iter()
            .all(|a| !a.to_string_lossy().contains("s3cret")));
    }

    #[test]
    fn run_stop_and_start_use_the_service_name() {
        let compose = stack();
        let run = compose.run(
            Service::Neo4j,
            ToolCommand::new("neo4j-admin").arg("version"),
        );
        assert!(run
            .to_string()
            .ends_with("run --rm -T --no-deps neo4j neo4j-admin version"));
        assert!(compose
            .stop(Service::Postgres)
            .to_string()
            .ends_with(" stop db"));
    }
}
