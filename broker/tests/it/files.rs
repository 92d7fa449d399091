//! What the broker leaves on disk: the data folder, the database with its WAL, and the keys are the
//! broker user's alone from their creation; and an existing PKI is used, never replaced.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use spean_broker::pki::Pki;
use spean_broker::{Broker, Config};

use crate::helpers::{lama, spawn_broker_with};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_folder_database_and_keys_are_readable_by_the_broker_user_alone() {
    // A data folder the broker creates itself (the temporary folder already is 0700).
    let broker = spawn_broker_with(|c| {
        let root = c.data_dir.clone();
        c.data_dir = root.join("spean-data");
        c.tls.pki_dir = root.join("pki");
    })
    .await;
    let mut hospital = broker.client("ahc-swu").await;
    // A write, so that the WAL holds something.
    hospital.submit(lama("files-0001")).await.unwrap();

    let data = broker.dir.path().join("spean-data");
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    for file in ["broker.db", "broker.db-wal", "broker.db-shm"] {
        let path = data.join(file);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let pki = broker.pki();
    let agency = broker.identity_dir("ahc-swu");
    for folder in [pki.clone(), pki.join("agencies"), agency.clone()] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    for key in [
        pki.join("ca.key"),
        pki.join("broker.key"),
        agency.join("key.pem"),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    broker.stop().await;
}

fn config(root: &Path) -> Config {
    let mut config = Config {
        data_dir: root.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.database.durable = false;
    config.tls.pki_dir = root.join("pki");
    config
}

#[tokio::test]
async fn a_copied_ca_certificate_without_its_key_is_used_and_no_new_ca_is_made() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    // The production guide: pki init offline, then copy ca.pem, broker.pem and broker.key.
    let offline = Pki::new(root.path().join("offline"));
    offline.init().unwrap();
    offline.issue_server(&["localhost".into()]).unwrap();
    let pki = Pki::new(root.path().join("pki"));
    std::fs::create_dir(pki.dir()).unwrap();
    for file in ["ca.pem", "broker.pem", "broker.key"] {
        std::fs::copy(offline.dir().join(file), pki.dir().join(file)).unwrap();
    }
    let ca = std::fs::read(pki.ca_cert()).unwrap();

    // The defaults (dev_pki "auto", embedded store): the broker starts with the network's CA.
    let broker = Broker::build(config(root.path())).await.unwrap();
    drop(broker);

    assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca);
    assert!(
        !pki.ca_key().exists(),
        "a CA key was made on the online host"
    );
    assert!(
        !pki.dir().join("agencies").exists(),
        "identities were made without the CA key"
    );
}

#[tokio::test]
async fn with_the_development_pki_off_a_missing_server_key_stops_startup_naming_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path().join("pki"));
    pki.init().unwrap();
    pki.issue_server(&["localhost".into()]).unwrap();
    std::fs::remove_file(pki.server_key()).unwrap();
    let mut config = config(root.path());
    config.tls.dev_pki = spean_broker::config::DevPki::Set(false);

    let err = Broker::build(config)
        .await
        .err()
        .expect("startup should fail");

    let message = err.to_string();
    assert!(message.contains("broker.key is missing"), "{message}");
    assert!(message.contains("tls.dev_pki is off"), "{message}");
    assert!(
        !pki.server_key().exists(),
        "the broker made a key it was not asked for"
    );
}
