//! The adapter's settings, layered: built-in defaults, then the TOML file given with `--config`, then
//! `SPEAN_ADAPTER_*` environment variables, then command-line flags. Validated once, at start.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::AdapterError;

/// The sections whose settings may come from `SPEAN_ADAPTER_<SECTION>__<KEY>`.
const NESTED: &[&str] = &["api__", "webhooks__", "retention__"];

/// Where the broker listens when nothing else is said: a broker on the same machine.
pub const DEFAULT_BROKER: &str = "https://localhost:50051";
/// The local store file when nothing else is said, relative to the working directory.
pub const DEFAULT_STORE: &str = "spean-adapter.db";

/// Everything the adapter needs to know before it can do anything.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// The folder holding `ca.pem`, `cert.pem` and `key.pem`: who this agency is on the network.
    pub identity: PathBuf,
    /// The broker's URL; the host must match a SAN of the broker's certificate.
    pub broker: String,
    /// The SQLite file shared by the daemon and the command line.
    pub store: PathBuf,
    /// The local HTTP API the daemon serves (docs/integration.md).
    #[serde(default)]
    pub api: ApiSettings,
    /// Retries and timeouts of webhook deliveries (`[webhooks]`); defaults when absent.
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhookSettings,
    /// The file holding the store's data key (32 random bytes, 0600, made on first use), kept
    /// apart from the store so that a copy of the store or of a backup does not carry it. Unset:
    /// `store.key` in the identity folder, beside the agency's TLS key, which is as secret.
    /// Ignored when `SPEAN_ADAPTER_STORE_PASSPHRASE` is set (docs/security.md#at-rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key: Option<PathBuf>,
    /// How long closed referrals keep their case files (docs/operations.md#retention).
    #[serde(default)]
    pub retention: Retention,
}

/// Where and how the daemon serves its HTTP API. Not served until `listen` is set: two adapters
/// on one machine (a demo, a test) would otherwise fight over one port.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// The address to listen on, e.g. `127.0.0.1:8450`; a port alone (`8450`) is that port on
    /// 127.0.0.1. An address beyond this machine needs `tls_cert` and `tls_key`.
    #[serde(deserialize_with = "address_or_port")]
    pub listen: Option<String>,
    /// The TLS certificate chain (PEM) to serve with.
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) to serve with.
    pub tls_key: Option<PathBuf>,
}

/// `listen` as text whether it was written as an address or as a port alone: figment reads
/// `SPEAN_ADAPTER_API__LISTEN=8450`, and `listen = 8450` in TOML, as a number.
fn address_or_port<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Listen {
        Port(u16),
        Address(String),
    }
    Ok(
        Option::<Listen>::deserialize(deserializer)?.map(|listen| match listen {
            Listen::Port(port) => port.to_string(),
            Listen::Address(address) => address,
        }),
    )
}

impl ApiSettings {
    /// The address to listen on, when the API is served.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, AdapterError> {
        let Some(listen) = self.listen.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let parsed = match listen.parse::<u16>() {
            Ok(port) => Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => listen.parse(),
        };
        parsed.map(Some).map_err(|e| AdapterError::Invalid {
            field: "api.listen".into(),
            reason: format!("{listen:?} is not an address and port, nor a port: {e}"),
        })
    }

    fn validate(&self) -> Result<(), AdapterError> {
        let invalid = |field: &str, reason: String| AdapterError::Invalid {
            field: field.into(),
            reason,
        };
        let Some(addr) = self.address()? else {
            return Ok(());
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "api.tls_key",
                    "is required with api.tls_cert".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "api.tls_cert",
                    "is required with api.tls_key".into(),
                ));
            }
            (None, None) if !addr.ip().is_loopback() => {
                return Err(invalid(
                    "api.listen",
                    format!(
                        "{addr} is reachable from other machines: serving the API there needs \
                         api.tls_cert and api.tls_key (case files and API keys must not cross \
                         a network in clear)"
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The retention setting: `[retention]` in the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Retention {
    /// How long after a referral closed its case file and notes are kept, e.g. `365d` (units d,
    /// h, m, s); two years unless set.
    #[serde(default = "default_closed_for")]
    pub closed_case_files_for: String,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            closed_case_files_for: default_closed_for(),
        }
    }
}

fn default_closed_for() -> String {
    crate::retention::DEFAULT_CLOSED_FOR.to_owned()
}

/// The setting's name, as errors name it.
pub const RETENTION_SETTING: &str = "retention.closed_case_files_for";

/// Values given on the command line (each may also come from its env var through clap); `None` means
/// "not given here", so that the file and defaults show through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_key: Option<PathBuf>,
}

#[derive(Serialize)]
struct Defaults {
    broker: &'static str,
    store: &'static str,
}

impl Settings {
    /// Layers defaults, the optional TOML file, the environment and the flags, and checks the result.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, AdapterError> {
        let mut figment = Figment::from(Serialized::defaults(Defaults {
            broker: DEFAULT_BROKER,
            store: DEFAULT_STORE,
        }));
        if let Some(file) = file {
            if !file.exists() {
                return Err(AdapterError::Config(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("SPEAN_ADAPTER_").only(&[
                "identity",
                "broker",
                "store",
                "store_key",
            ]))
            // Nested settings: SPEAN_ADAPTER_API__LISTEN is `api.listen`.
            .merge(
                Env::prefixed("SPEAN_ADAPTER_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        NESTED.iter().any(|section| key.starts_with(section))
                    })
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|error| AdapterError::Config(error.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Where the store's key comes from: the passphrase given at start, else the key file.
    pub fn store_key(&self) -> crate::at_rest::StoreKey {
        let file = self
            .store_key
            .clone()
            .unwrap_or_else(|| self.identity.join("store.key"));
        crate::at_rest::StoreKey::from_env_or_file(&file)
    }

    /// The retention period, parsed.
    pub fn retention_period(&self) -> Result<crate::retention::Period, AdapterError> {
        crate::retention::Period::parse(RETENTION_SETTING, &self.retention.closed_case_files_for)
    }

    fn validate(&self) -> Result<(), AdapterError> {
        self.api.validate()?;
        // Only `https://`: over `http://` the adapter would send case files in clear to whoever
        // answers at that address, and would never learn it had done so.
        if !self.broker.starts_with("https://") {
            return Err(AdapterError::Invalid {
                field: "broker".into(),
                reason: format!(
                    "{:?} is not an https:// URL; case files travel only over TLS",
                    self.broker
                ),
            });
        }
        self.retention_period()?;
        if self.identity.as_os_str().is_empty() {
            return Err(AdapterError::Invalid {
                field: "identity".into(),
                reason: "empty path".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("adapter.toml");
        std::fs::write(&file, "identity = \"/from/file\"\nstore = \"file.db\"\n")?;
        let settings = Settings::load(
            Some(&file),
            Overrides {
                store: Some("flag.db".into()),
                ..Overrides::default()
            },
        )?;
        assert_eq!(settings.identity, PathBuf::from("/from/file"));
        assert_eq!(settings.store, PathBuf::from("flag.db"));
        assert_eq!(settings.broker, DEFAULT_BROKER);
        assert_eq!(settings.retention.closed_case_files_for, "730d");
        assert_eq!(settings.store_key, None);
        Ok(())
    }

    #[test]
    fn retention_and_the_key_file_come_from_the_file_and_a_bad_period_names_the_setting()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("adapter.toml");
        std::fs::write(
            &file,
            "identity = \"/id\"\nstore_key = \"/keys/store.key\"\n\
             [retention]\nclosed_case_files_for = \"365d\"\n",
        )?;
        let settings = Settings::load(Some(&file), Overrides::default())?;
        assert_eq!(settings.store_key, Some(PathBuf::from("/keys/store.key")));
        assert_eq!(
            settings.retention_period()?.as_duration(),
            std::time::Duration::from_secs(365 * 86_400)
        );
        std::fs::write(
            &file,
            "identity = \"/id\"\n[retention]\nclosed_case_files_for = \"a year\"\n",
        )?;
        match Settings::load(Some(&file), Overrides::default()) {
            Err(AdapterError::Invalid { field, .. }) => assert_eq!(field, RETENTION_SETTING),
            other => panic!("a bad period was not refused: {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn webhook_settings_read_from_the_file_with_units_and_default_when_absent()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("adapter.toml");
        std::fs::write(&file, "identity = \"/i\"\n")?;
        let defaults = Settings::load(Some(&file), Overrides::default())?;
        assert_eq!(
            defaults.webhooks,
            crate::webhooks::WebhookSettings::default()
        );
        std::fs::write(
            &file,
            "identity = \"/i\"\n[webhooks]\nfirst_retry = 2\ndisable_after = \"7d\"\n",
        )?;
        let settings = Settings::load(Some(&file), Overrides::default())?;
        assert_eq!(
            settings.webhooks.first_retry,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            settings.webhooks.disable_after,
            std::time::Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            settings.webhooks.request_timeout,
            defaults.webhooks.request_timeout
        );
        std::fs::write(
            &file,
            "identity = \"/i\"\n[webhooks]\nfirst_retry = \"soon\"\n",
        )?;
        let error = Settings::load(Some(&file), Overrides::default())
            .err()
            .ok_or("a bad duration was accepted")?;
        assert!(error.to_string().contains("first_retry"), "{error}");
        Ok(())
    }

    #[test]
    fn a_broker_address_that_is_not_https_is_refused_naming_the_setting() {
        for broker in [
            "http://broker.example:50051",
            "broker.example:50051",
            "HTTP://x",
        ] {
            let result = Settings::load(
                None,
                Overrides {
                    identity: Some("/identity".into()),
                    broker: Some(broker.into()),
                    ..Overrides::default()
                },
            );
            match result {
                Err(AdapterError::Invalid { field, reason }) => {
                    assert_eq!(field, "broker");
                    assert!(reason.contains("https://"), "{reason}");
                }
                other => panic!("{broker} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn the_api_is_served_beyond_this_machine_only_over_tls() {
        let load = |listen: &str, tls: bool| {
            let mut settings = Settings {
                identity: "/identity".into(),
                broker: DEFAULT_BROKER.into(),
                store: DEFAULT_STORE.into(),
                api: ApiSettings {
                    listen: Some(listen.into()),
                    ..ApiSettings::default()
                },
                webhooks: Default::default(),
                store_key: None,
                retention: Default::default(),
            };
            if tls {
                settings.api.tls_cert = Some("cert.pem".into());
                settings.api.tls_key = Some("key.pem".into());
            }
            settings.validate()
        };
        load("127.0.0.1:8450", false).unwrap();
        load("[::1]:8450", false).unwrap();
        load("0.0.0.0:8450", true).unwrap();
        for (listen, field) in [
            ("0.0.0.0:8450", "api.listen"),
            ("10.0.0.5:1", "api.listen"),
            ("localhost", "api.listen"),
        ] {
            match load(listen, false) {
                Err(AdapterError::Invalid { field: f, .. }) => assert_eq!(f, field, "{listen}"),
                other => panic!("{listen} was not refused: {other:?}"),
            }
        }
        let port_only = ApiSettings {
            listen: Some("8450".into()),
            ..ApiSettings::default()
        };
        assert_eq!(
            port_only.address().unwrap(),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8450)))
        );
        assert_eq!(ApiSettings::default().address().unwrap(), None);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own error type, in its own test jail
    fn api_settings_come_from_the_environment_as_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SPEAN_ADAPTER_IDENTITY", "/identity");
            jail.set_env("SPEAN_ADAPTER_API__LISTEN", "127.0.0.1:9000");
            let settings = Settings::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(settings.api.listen.as_deref(), Some("127.0.0.1:9000"));
            // A port alone, as the README's walkthrough gives it, which figment reads as a number.
            jail.set_env("SPEAN_ADAPTER_API__LISTEN", "8450");
            let settings = Settings::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(settings.api.listen.as_deref(), Some("8450"));
            assert_eq!(
                settings.api.address().map_err(|e| e.to_string())?,
                Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8450)))
            );
            Ok(())
        });
    }
}
