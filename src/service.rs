//! The data stores itbackup knows by name, and lists of them as given on the command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One data store of the platform. The order here is the order of the runbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Opensearch,
    Neo4j,
    Postgres,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Opensearch, Service::Neo4j, Service::Postgres];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Opensearch => "opensearch",
            Service::Neo4j => "neo4j",
            Service::Postgres => "postgres",
        }
    }

    /// The port an address of this store means when it names none (so
    /// that `host` and `host:5432` are one server to the locks).
    pub fn default_port(self) -> u16 {
        match self {
            Service::Opensearch => 9200,
            Service::Neo4j => 7687,
            Service::Postgres => 5432,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Service::ALL
            .into_iter()
            .find(|svc| svc.as_str() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown service '{}'; valid services are: {}",
                    s.trim(),
                    valid_names()
                )
            })
    }
}

fn valid_names() -> String {
    Service::ALL.map(Service::as_str).join(", ")
}

/// A comma-separated, de-duplicated selection of services (`opensearch,neo4j,postgres`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceList(pub Vec<Service>);

impl ServiceList {
    pub fn all() -> Self {
        ServiceList(Service::ALL.to_vec())
    }

    /// What a backup or drill works on: the services named, else every store.
    pub fn or_all(selection: Option<&ServiceList>) -> Vec<Service> {
        selection.map_or_else(|| Service::ALL.to_vec(), |list| list.0.clone())
    }

    /// What a restore works on: the services named, each of which the backup
    /// must hold (`Err` names the first it does not), else all it holds.
    pub fn within(
        selection: Option<&ServiceList>,
        held: impl IntoIterator<Item = Service>,
    ) -> Result<Vec<Service>, Service> {
        let held: Vec<Service> = held.into_iter().collect();
        match selection {
            None => Ok(held),
            Some(list) => match list.0.iter().find(|s| !held.contains(s)) {
                Some(missing) => Err(*missing),
                None => Ok(list.0.clone()),
            },
        }
    }
}

impl FromStr for ServiceList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut services = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let svc: Service = part.parse()?;
            if !services.contains(&svc) {
                services.push(svc);
            }
        }
        if services.is_empty() {
            return Err(format!(
                "no service named; valid services are: {}",
                valid_names()
            ));
        }
        services.sort();
        Ok(ServiceList(services))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_unknown_names() {
        let list: ServiceList = "postgres, neo4j,postgres".parse().unwrap();
        assert_eq!(list.0, vec![Service::Neo4j, Service::Postgres]);
        let err = "postgres,mysql".parse::<ServiceList>().unwrap_err();
        assert!(err.contains("mysql") && err.contains("opensearch, neo4j, postgres"));
        assert!("".parse::<ServiceList>().is_err());
    }

    #[test]
    fn no_selection_means_every_store_or_everything_the_backup_holds() {
        assert_eq!(ServiceList::or_all(None), Service::ALL);
        let named: ServiceList = "neo4j".parse().unwrap();
        assert_eq!(ServiceList::or_all(Some(&named)), vec![Service::Neo4j]);
        let held = [Service::Neo4j, Service::Postgres];
        assert_eq!(ServiceList::within(None, held), Ok(held.to_vec()));
        assert_eq!(
            ServiceList::within(Some(&named), held),
            Ok(vec![Service::Neo4j])
        );
        let absent: ServiceList = "opensearch,postgres".parse().unwrap();
        assert_eq!(
            ServiceList::within(Some(&absent), held),
            Err(Service::Opensearch)
        );
    }
}
