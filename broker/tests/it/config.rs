//! The real `spean-broker` binary reads its configuration the documented ways: the file named by
//! `--config` or `SPEAN_BROKER_CONFIG`, then `SPEAN_BROKER_*` variables, refusing unknown ones.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `spean-broker --data-dir DIR pki init` with exactly the environment given: `pki init` reads
/// the whole configuration and writes files, without binding a port or opening a database.
fn pki_init(data_dir: &Path, env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spean-broker"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["pki", "init"])
        // Nothing from the environment running the tests may leak in as a setting.
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_file_named_by_spean_broker_config_is_read_and_the_variable_is_not_taken_for_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki-from-file");
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!("[tls]\npki_dir = {:?}\n", pki.to_str().unwrap()),
    )
    .unwrap();

    let output = pki_init(&dir.path().join("data"), &[("SPEAN_BROKER_CONFIG", &file)]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The CA went where the file said, not to the default <data_dir>/pki: the file was read.
    assert!(pki.join("ca.pem").exists());
    assert!(!dir.path().join("data").join("pki").exists());
}

#[test]
fn an_unknown_spean_broker_variable_still_stops_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = pki_init(
        dir.path(),
        &[("SPEAN_BROKER_LIMITS__MAX_CASE_BYTES", Path::new("3"))],
    );

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_case_bytes"), "stderr: {stderr}");
    assert!(!dir.path().join("pki").exists());
}
