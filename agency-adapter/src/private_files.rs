//! Files that can hold case data are the adapter's user's alone: 0600 for files, 0700 for folders.
//! The umask set at start ([`restrict_umask`]) covers whatever the adapter or SQLite creates;
//! [`tighten`] fixes files made looser before (an older version, a copy by hand).

use std::{os::unix::fs::PermissionsExt, path::Path};

use crate::AdapterError;

/// Makes everything this process creates from now on unreadable by others (umask 077): the store's
/// `-wal` and `-shm` files, backups, the key file, logs. Called first thing in `main`.
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Sets `path` to `mode` when it grants more than `mode` does; true if it changed. Logs the path
/// (never content) at warn, since a looser mode means the data was readable by others until now.
pub fn tighten(path: &Path, mode: u32) -> Result<bool, AdapterError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(AdapterError::Config(format!("{}: {e}", path.display())));
        }
    };
    let current = metadata.permissions().mode() & 0o777;
    if current & !mode == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AdapterError::Config(format!("tightening {}: {e}", path.display())))?;
    tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{mode:o}"), "a file holding case data was readable by others; tightened");
    Ok(true)
}

/// The store and the files SQLite keeps beside it (`-wal`, `-shm`), each tightened to 0600.
pub fn tighten_store(path: &Path) -> Result<(), AdapterError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        tighten(Path::new(&name), 0o600)?;
    }
    Ok(())
}
