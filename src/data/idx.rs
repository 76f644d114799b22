//! The IDX file format of MNIST and Fashion-MNIST, read from bytes or from a path, gzip-compressed or not.
//!
//! An IDX file is a 4-byte magic number `00 00 <dtype> <rank>`, then `rank` big-endian u32 dimensions, then
//! the items in row-major order. Only dtype `0x08` (unsigned byte) is supported, which is what every
//! MNIST-style file uses.
//!
//! Everything here treats the file as untrusted: the header's dimensions are multiplied with overflow checks
//! and compared against the bytes actually present *before* anything is allocated from them, and
//! decompression stops at [`MAX_IDX_BYTES`], so a header claiming 4·10⁹ images or a gzip bomb is an error,
//! not an allocation. Every problem is an [`Error::Format`] naming the file and what is wrong with it.

use crate::error::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

/// The largest (decompressed) IDX file accepted: 256 MiB, five times the full MNIST training images.
pub const MAX_IDX_BYTES: u64 = 256 << 20;

/// The IDX dtype code of unsigned bytes, the only one supported.
pub const IDX_UBYTE: u8 = 0x08;

/// A parsed IDX file: its dimensions and its items (unsigned bytes, row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx<'a> {
    /// The dimensions from the header (e.g. (count, rows, cols) for images).
    pub dims: Vec<usize>,
    /// The items, row-major, borrowed from the input when possible.
    pub data: Cow<'a, [u8]>,
}

impl Idx<'_> {
    /// The same array owning its bytes.
    pub fn into_owned(self) -> Idx<'static> {
        Idx {
            dims: self.dims,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}

fn format_error(name: &str, msg: impl Into<String>) -> Error {
    Error::Format {
        path: name.to_string(),
        msg: msg.into(),
    }
}

/// Whether `bytes` start with the gzip magic `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// `bytes` decompressed if they are gzip (capped at [`MAX_IDX_BYTES`]), else as they are. `name` is the
/// file's name for error messages.
pub fn decompress<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format_error(name, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(format_error(
            name,
            format!("decompressed data exceeds the limit of {MAX_IDX_BYTES} bytes"),
        ));
    }
    Ok(Cow::Owned(out))
}

/// Parses an IDX file (gzip or plain) from `bytes`; `name` names it in error messages.
pub fn parse_idx<'a>(bytes: &'a [u8], name: &str) -> Result<Idx<'a>> {
    let raw = decompress(bytes, name)?;
    let (dims, header_len) = parse_header(&raw, name)?;
    Ok(Idx {
        dims,
        data: match raw {
            Cow::Borrowed(b) => Cow::Borrowed(&b[header_len..]),
            Cow::Owned(mut v) => {
                v.drain(..header_len);
                Cow::Owned(v)
            }
        },
    })
}

/// Checks the magic, dtype and dimensions against the data length; returns the dimensions and the header
/// length in bytes.
fn parse_header(raw: &[u8], name: &str) -> Result<(Vec<usize>, usize)> {
    let Some(&[zero0, zero1, dtype, rank]) = raw.get(..4) else {
        return Err(format_error(
            name,
            format!(
                "too short for an IDX header ({} bytes, need at least 4)",
                raw.len()
            ),
        ));
    };
    if zero0 != 0 || zero1 != 0 {
        return Err(format_error(
            name,
            format!(
                "bad IDX magic number {:02x} {:02x} {:02x} {:02x} (must start with 00 00)",
                zero0, zero1, dtype, rank
            ),
        ));
    }
    if dtype != IDX_UBYTE {
        return Err(format_error(
            name,
            format!("unsupported IDX dtype 0x{dtype:02x} (only 0x08, unsigned byte, is supported)"),
        ));
    }
    if rank == 0 {
        return Err(format_error(name, "IDX rank 0 (no dimensions)"));
    }
    let header_len = 4 + 4 * rank as usize;
    let Some(dim_bytes) = raw.get(4..header_len) else {
        return Err(format_error(
            name,
            format!(
                "truncated IDX header: rank {rank} needs {header_len} header bytes, file has {}",
                raw.len()
            ),
        ));
    };
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let dims_text = dims_text(&dims);
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            format_error(
                name,
                format!("header dimensions {dims_text} overflow the address space"),
            )
        })?;
    let present = raw.len() - header_len;
    if expected > present {
        return Err(format_error(
            name,
            format!(
                "truncated data: header dimensions {dims_text} need {expected} bytes, the file holds {present}"
            ),
        ));
    }
    if expected < present {
        return Err(format_error(
            name,
            format!(
                "size mismatch: header dimensions {dims_text} need {expected} bytes, the file holds {present} ({} extra)",
                present - expected
            ),
        ));
    }
    Ok((dims, header_len))
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// Reads and parses the IDX file at `path` (gzip or plain). Files larger than [`MAX_IDX_BYTES`] are refused
/// before they are read.
pub fn read_idx_file(path: &Path) -> Result<Idx<'static>> {
    let name = path.display().to_string();
    let io_error = |source| Error::Io {
        path: name.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io_error)?.len();
    if size > MAX_IDX_BYTES {
        return Err(format_error(
            &name,
            format!("file of {size} bytes exceeds the limit of {MAX_IDX_BYTES} bytes"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io_error)?;
    Ok(parse_idx(&bytes, &name)?.into_owned())
}

/// Images from an IDX file: `count` images of `rows × cols` unsigned-byte pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImages {
    /// Number of images.
    pub count: usize,
    /// Rows (height) of each image.
    pub rows: usize,
    /// Columns (width) of each image.
    pub cols: usize,
    /// count·rows·cols pixels, row-major.
    pub pixels: Vec<u8>,
}

/// Interprets a parsed IDX array as images: rank 3 (count, rows, cols) with non-empty images.
pub fn images_from_idx(idx: Idx<'_>, name: &str) -> Result<RawImages> {
    let &[count, rows, cols] = idx.dims.as_slice() else {
        let hint = if idx.dims.len() == 1 {
            " — is this a labels file?"
        } else {
            ""
        };
        return Err(format_error(
            name,
            format!(
                "expected an image file (IDX rank 3: count, rows, cols), found rank {} ({}){hint}",
                idx.dims.len(),
                dims_text(&idx.dims)
            ),
        ));
    };
    if rows == 0 || cols == 0 {
        return Err(format_error(
            name,
            format!("images of size {rows}×{cols} are empty"),
        ));
    }
    Ok(RawImages {
        count,
        rows,
        cols,
        pixels: idx.data.into_owned(),
    })
}

/// Interprets a parsed IDX array as class labels: rank 1, each label below `classes`.
pub fn labels_from_idx(idx: Idx<'_>, name: &str, classes: usize) -> Result<Vec<usize>> {
    if idx.dims.len() != 1 {
        let hint = if idx.dims.len() == 3 {
            " — is this an image file?"
        } else {
            ""
        };
        return Err(format_error(
            name,
            format!(
                "expected a labels file (IDX rank 1), found rank {} ({}){hint}",
                idx.dims.len(),
                dims_text(&idx.dims)
            ),
        ));
    }
    if let Some((i, &label)) = idx
        .data
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(format_error(
            name,
            format!("label {label} at index {i} is out of range (expected labels below {classes} classes)"),
        ));
    }
    Ok(idx.data.iter().map(|&l| l as usize).collect())
}

/// Parses image bytes (gzip or plain) named `name`.
pub fn read_images(bytes: &[u8], name: &str) -> Result<RawImages> {
    images_from_idx(parse_idx(bytes, name)?, name)
}

/// Parses label bytes (gzip or plain) named `name`, each below `classes`.
pub fn read_labels(bytes: &[u8], name: &str, classes: usize) -> Result<Vec<usize>> {
    labels_from_idx(parse_idx(bytes, name)?, name, classes)
}

/// Checks that an image file and a label file describe the same number of examples.
pub fn check_counts(
    images: &RawImages,
    images_name: &str,
    labels: &[usize],
    labels_name: &str,
) -> Result<()> {
    if images.count != labels.len() {
        return Err(format_error(
            images_name,
            format!(
                "image/label count mismatch: {} images here but {} labels in {labels_name}",
                images.count,
                labels.len()
            ),
        ));
    }
    Ok(())
}

/// Serialises `data` with dimensions `dims` as a plain (uncompressed) unsigned-byte IDX file; the inverse of
/// [`parse_idx`], useful for writing subsets and test fixtures. Fails if a dimension exceeds u32, the rank
/// exceeds 255, or the data length does not match the dimensions.
pub fn write_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let rank = u8::try_from(dims.len())
        .ok()
        .filter(|&r| r > 0)
        .ok_or_else(|| {
            Error::invalid("write_idx", format!("rank {} not in 1..=255", dims.len()))
        })?;
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(Error::invalid(
            "write_idx",
            format!(
                "dimensions {} do not match {} data bytes",
                dims_text(dims),
                data.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, IDX_UBYTE, rank]);
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| {
            Error::invalid("write_idx", format!("dimension {d} does not fit in u32"))
        })?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}
