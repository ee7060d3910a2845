//! Minimal `.npy` reading and writing: little-endian float arrays in C order.
//!
//! Format (numpy's `format.py`): the magic `\x93NUMPY`, a major and minor version byte, the header
//! length (u16 little-endian for version 1.0, u32 for 2.0 and 3.0), then a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and ending in a
//! newline, then the raw data. Reading accepts `<f4` and `<f8` (converted to f32); writing produces
//! version 1.0 (2.0 when the header is too long) with `<f4`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a `.npy` file; errors are one-line messages naming the file.
pub fn read(path: &Path) -> Result<Array, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the bytes of a `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
            (len, 12)
        }
        v => return Err(format!("unsupported .npy version {v}.{}", bytes[7])),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr")?;
    let descr = parse_string_literal(descr)?;
    let fortran = dict_value(header, "fortran_order")?;
    let shape = parse_shape(dict_value(header, "shape")?)?;
    match fortran.trim_start() {
        f if f.starts_with("False") => {}
        f if f.starts_with("True") => {
            return Err("Fortran-order arrays are not supported (save a C-order array)".into())
        }
        _ => return Err("bad fortran_order in the .npy header".into()),
    }
    let width = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype '{other}' is not supported (expected little-endian float32 '<f4')"
            ))
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &e| acc.checked_mul(e))
        .ok_or("the shape's element count overflows")?;
    let payload = &bytes[data_start..];
    if count.checked_mul(width) != Some(payload.len()) {
        return Err(format!(
            "shape {shape:?} needs {} bytes of data, the file holds {}",
            count.saturating_mul(width),
            payload.len()
        ));
    }
    let data = if width == 4 {
        payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        payload
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect()
    };
    Ok(Array { shape, data })
}

/// The text after `'key':` in the header dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    for quote in ['\'', '"'] {
        let pattern = format!("{quote}{key}{quote}");
        if let Some(pos) = header.find(&pattern) {
            let rest = header[pos + pattern.len()..].trim_start();
            return rest
                .strip_prefix(':')
                .map(str::trim_start)
                .ok_or_else(|| format!("bad '{key}' entry in the .npy header"));
        }
    }
    Err(format!("the .npy header has no '{key}'"))
}

/// A Python string literal at the start of `text`.
fn parse_string_literal(text: &str) -> Result<String, String> {
    let quote = text
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')
        .ok_or("bad descr in the .npy header")?;
    let body = &text[1..];
    let end = body.find(quote).ok_or("bad descr in the .npy header")?;
    Ok(body[..end].to_string())
}

/// A Python tuple of integers at the start of `text`: `()`, `(5,)`, `(2, 3)`.
fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let body = text
        .strip_prefix('(')
        .and_then(|t| t.find(')').map(|end| &t[..end]))
        .ok_or("bad shape in the .npy header")?;
    body.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            // numpy may write Python 2 longs as `3L`.
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad dimension '{s}' in the .npy shape"))
        })
        .collect()
}

/// Serializes a float32 array as `.npy` bytes.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that magic + version + length + header is a multiple of 64, the header ending in '\n'.
    let padded = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        format!("{dict}{}\n", " ".repeat(pad))
    };
    let mut out = Vec::with_capacity(128 + data.len() * 4);
    out.extend_from_slice(MAGIC);
    let header = padded(10);
    if header.len() <= u16::MAX as usize {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
    } else {
        let header = padded(12);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
    }
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Output files written all-or-nothing: each goes to a temporary name next to its destination, and
/// only once every file is complete are they renamed into place. On drop without `commit`, the
/// temporaries are removed.
#[derive(Default)]
pub struct PendingWrites {
    files: Vec<(PathBuf, PathBuf)>, // (temporary, destination)
}

impl PendingWrites {
    pub fn add(&mut self, path: &Path, shape: &[usize], data: &[f32]) -> Result<(), String> {
        let file_name = path
            .file_name()
            .ok_or_else(|| format!("{}: not a file path", path.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        File::create(&temp)
            .and_then(|mut f| {
                f.write_all(&to_bytes(shape, data))?;
                f.sync_all()
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                format!("{}: cannot write: {e}", path.display())
            })?;
        self.files.push((temp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every temporary into place.
    pub fn commit(mut self) -> Result<(), String> {
        for (temp, dest) in std::mem::take(&mut self.files) {
            std::fs::rename(&temp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                format!("{}: cannot write: {e}", dest.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for PendingWrites {
    fn drop(&mut self) {
        for (temp, _) in &self.files {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for shape in [vec![], vec![5], vec![2, 3], vec![2, 0, 4]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let bytes = to_bytes(&shape, &data);
            assert_eq!(bytes.len() % 64, (n * 4) % 64);
            let back = parse(&bytes).unwrap();
            assert_eq!(back, Array { shape, data });
        }
    }

    #[test]
    fn reads_numpy_written_headers() {
        // As numpy 1.x writes them (v1.0, 16-byte padding of that era is also accepted).
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }          \n";
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f64.to_le_bytes());
        bytes.extend_from_slice(&(-2.0f64).to_le_bytes());
        assert_eq!(parse(&bytes).unwrap().data, vec![1.5, -2.0]);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse(b"hello").is_err());
        let good = to_bytes(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert!(parse(&good).is_ok());
        assert!(parse(&good[..good.len() - 1])
            .unwrap_err()
            .contains("bytes"));
        let replace = |from: &[u8], to: &[u8]| {
            let mut bytes = good.clone();
            let pos = bytes.windows(from.len()).position(|w| w == from).unwrap();
            bytes[pos..pos + to.len()].copy_from_slice(to);
            bytes
        };
        assert!(parse(&replace(b"<f4", b">f4"))
            .unwrap_err()
            .contains("'>f4'"));
        assert!(parse(&replace(b"<f4", b"<i4"))
            .unwrap_err()
            .contains("'<i4'"));
        assert!(parse(&replace(b"False", b"True "))
            .unwrap_err()
            .contains("Fortran"));
        assert!(parse(&replace(b"(2, 2)", b"(2, 3)"))
            .unwrap_err()
            .contains("bytes"));
    }
}
