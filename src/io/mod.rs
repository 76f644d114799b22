//! Reading and writing weights: safetensors files with timm's ConvNeXt key names ([`save_model`],
//! [`load_model`]); the adapter files live in [`crate::peft`] and use the same low-level functions.
//!
//! Every file is written atomically ([`atomic_write`]): to a temporary file in the same directory, flushed to
//! disk, then renamed over the target, so a crash never leaves a half-written checkpoint in its place.

mod model;
pub mod model_folder;
mod safetensors;

pub use model::{load_model, save_model, LoadNotes};
pub use model_folder::{open_pretrained, PretrainedCfg, PretrainedModel};
pub use safetensors::{
    read_safetensors, read_safetensors_bytes, read_safetensors_metadata, write_safetensors,
    write_safetensors_host, HostTensor,
};

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// The JSON file at `path` parsed as `T`, or `None` if there is no file; a file that does not parse is an
/// error naming it and saying it is not `what`.
pub fn read_json_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Format {
            path: path.display().to_string(),
            msg: format!("not {what}: {e}"),
        })
}

/// An `Error::Io` for `path`.
pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a fresh temporary file `.<name>.tmp-<pid>` beside it (a stale one
/// from an earlier process with the same pid is removed first; never followed if it is a link), fsync,
/// rename, then an fsync of the directory so the rename itself is durable (an error on Unix; skipped where
/// directories cannot be opened).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Format {
            path: path.display().to_string(),
            msg: "not a file path".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

/// fsync of a directory, making a rename inside it durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Directories cannot be opened as files here; the rename is as durable as the platform makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}
