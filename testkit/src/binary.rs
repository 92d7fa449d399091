//! The workspace's binaries, found where cargo put them: beside the running executable.

use std::path::PathBuf;

use crate::Error;

/// The binary `name` built by cargo in the same target folder as the running executable. A
/// benchmark binary sits in `target/<profile>/` beside it; a test executable sits one folder down,
/// in `target/<profile>/deps/`, so that folder's parent is looked at too. Tests start the real
/// binaries rather than a copy of their code, so what they run is what ships.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let mut folder = exe.parent();
    let mut looked = Vec::new();
    for _ in 0..2 {
        let Some(dir) = folder else { break };
        let path = dir.join(name);
        if path.exists() {
            return Ok(path);
        }
        looked.push(dir.to_owned());
        folder = dir.parent();
    }
    Err(Error::MissingBinary {
        name: name.to_owned(),
        looked,
    })
}
