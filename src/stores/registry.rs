//! The stores this build knows: the one list that opening a store and the
//! tests go through. A store is a [`Service`] (its name and default port),
//! a folder under `stores/` whose `mod.rs` defines its [`Registered`] entry,
//! and one line in [`REGISTRY`] (docs/architecture.md, "Adding a store").

use crate::service::Service;

use super::{neo4j, opensearch, postgres, Store, StoreSettings};

/// What the rest of the program needs of a store before one is open.
pub struct Registered {
    pub service: Service,
    /// The store, configured from its section of the settings.
    pub open: fn(&StoreSettings) -> Box<dyn Store>,
    /// Every method is read back from its manifest record and listed by
    /// the manifest's schema ([`super::method::check_methods`] of its enum).
    #[cfg(test)]
    pub check_methods: fn() -> std::result::Result<(), String>,
}

/// Every store, in the order of [`Service::ALL`] (the runbook's).
pub const REGISTRY: [Registered; 3] = [
    opensearch::REGISTERED,
    neo4j::REGISTERED,
    postgres::REGISTERED,
];

/// The entry of `service`.
pub fn registered(service: Service) -> &'static Registered {
    REGISTRY
        .iter()
        .find(|entry| entry.service == service)
        .expect("every service is registered (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_is_registered_once_with_methods_the_manifest_knows() {
        let services: Vec<Service> = REGISTRY.iter().map(|entry| entry.service).collect();
        assert_eq!(services, Service::ALL);
        for entry in &REGISTRY {
            if let Err(e) = (entry.check_methods)() {
                panic!("{}: {e}", entry.service);
            }
            assert_eq!(entry.service.as_str().parse::<Service>(), Ok(entry.service));
            assert!(entry.service.default_port() > 0);
        }
    }

    /// Every store opens from its own settings (defaults: an empty config
    /// section, no flags), is the service it is registered as, has drill
    /// data, and the manifest's schema knows its name.
    #[test]
    fn every_registered_store_opens_from_its_settings_with_drill_data_and_a_schema_entry() {
        let settings = StoreSettings {
            target: crate::target::Target::Local,
            postgres: postgres::settings::PostgresSettings::resolve(
                Default::default(),
                None,
                crate::environment::nothing,
            )
            .unwrap(),
            opensearch: opensearch::settings::OpenSearchSettings::resolve(
                Default::default(),
                None,
                None,
                None,
                crate::environment::nothing,
            )
            .unwrap(),
            neo4j: neo4j::settings::Neo4jSettings::resolve(
                Default::default(),
                None,
                crate::environment::nothing,
            )
            .unwrap(),
        };
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/manifest.schema.json")).unwrap();
        let schema = schema.to_string();
        for entry in &REGISTRY {
            let store = (entry.open)(&settings);
            assert_eq!(store.service(), entry.service);
            assert!(!store.drill_location().is_empty(), "{}", entry.service);
            assert!(
                schema.contains(&format!("\"{}\"", entry.service.as_str())),
                "docs/manifest.schema.json does not name the service {}",
                entry.service
            );
        }
    }
}
