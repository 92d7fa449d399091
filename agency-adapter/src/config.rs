//! The adapter's settings, layered: built-in defaults, then the TOML file given with `--config`, then
//! `SPEAN_ADAPTER_*` environment variables, then command-line flags. Validated once, at start.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::AdapterError;

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
    /// Retries and timeouts of webhook deliveries (`[webhooks]`); defaults when absent.
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhookSettings,
}

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
            .merge(Env::prefixed("SPEAN_ADAPTER_").split("__").only(&[
                "identity",
                "broker",
                "store",
                "webhooks.first_retry",
                "webhooks.max_retry_interval",
                "webhooks.disable_after",
                "webhooks.request_timeout",
            ]))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|error| AdapterError::Config(error.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), AdapterError> {
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
}
