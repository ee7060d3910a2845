//! Minimal `.npy` reading and writing: little-endian float arrays in C order.
//!
//! Format (numpy's `format.py`): the magic `\x93NUMPY`, a major and minor version byte, the header
//! length (u16 little-endian for version 1.0, u32 for 2.0 and 3.0), then a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and ending in a
//! newline, then the raw data. Reading accepts `<f4` and `<f8` in C order (kept as read: a float64
//! array is rounded once, straight to the command's dtype, not through f32); writing produces version
//! 1.0 (2.0 when the header is too long) with `<f4`. docs/cli.md lists what the CLI accepts.
//!
//! Reading is streamed and its allocations are fallible: a header whose shape the file cannot hold is
//! an error before anything is allocated, and an array too large for memory is an error, not an abort.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use gated_sdpa::{DType, Element, HostBuffer};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Longest header accepted (numpy itself refuses headers over 10 000 bytes by default).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// The values of an array, in the file's precision.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A float array and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Array {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }

    /// True when the file held float64 values (they lose precision when rounded to 16 bits).
    pub fn is_f64(&self) -> bool {
        matches!(self.data, Data::F64(_))
    }

    /// The values rounded to `T` (nearest even) in an aligned buffer. A finite value too large for
    /// `T` is an error naming its index; NaN and infinities pass through unchanged.
    pub fn round_to<T: Element>(&self) -> Result<HostBuffer<T>, String> {
        let mut out = HostBuffer::<T>::try_new(self.len()).map_err(|e| e.to_string())?;
        // (value as read, value rounded once to T)
        let values: Box<dyn Iterator<Item = (f64, T)> + '_> = match &self.data {
            Data::F32(v) => Box::new(v.iter().map(|&x| (f64::from(x), T::from_f32(x)))),
            Data::F64(v) => Box::new(v.iter().map(|&x| (x, T::from_f64(x)))),
        };
        for (i, (slot, (x, rounded))) in out.as_mut_slice().iter_mut().zip(values).enumerate() {
            *slot = rounded;
            if x.is_finite() && !slot.to_f64().is_finite() {
                let largest = match T::DTYPE {
                    DType::BF16 => half::bf16::MAX.to_f64(),
                    DType::F16 => half::f16::MAX.to_f64(),
                };
                return Err(format!(
                    "element {:?} ({x:e}) overflows {} (largest finite value {largest:e})",
                    multi_index(&self.shape, i),
                    T::DTYPE
                ));
            }
        }
        Ok(out)
    }
}

/// The C-order multi-index of the element at `linear`.
fn multi_index(shape: &[usize], mut linear: usize) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &extent) in index.iter_mut().zip(shape).rev() {
        if extent > 0 {
            *i = linear % extent;
            linear /= extent;
        }
    }
    index
}

/// Reads a `.npy` file; errors are one-line messages naming the file.
pub fn read(path: &Path) -> Result<Array, String> {
    let fail = |e: String| format!("{}: {e}", path.display());
    let file = File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    // The size of a regular file bounds what its header may claim (pipes have no size).
    let size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    read_from(&mut BufReader::new(file), size).map_err(fail)
}

/// Parses the bytes of a `.npy` file (tests use it).
#[cfg(test)]
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    read_from(&mut &bytes[..], Some(bytes.len() as u64))
}

/// Fills `buf`, or returns how many bytes were read before the end of the stream.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    Ok(filled)
}

/// Reads one array from `reader`; `size`, when known, is the stream's length in bytes.
fn read_from(reader: &mut impl Read, size: Option<u64>) -> Result<Array, String> {
    let mut prefix = [0u8; 10];
    if read_full(reader, &mut prefix)? < 10 || &prefix[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, header_start) = match prefix[6] {
        1 => (
            usize::from(u16::from_le_bytes([prefix[8], prefix[9]])),
            10usize,
        ),
        2 | 3 => {
            let mut high = [0u8; 2];
            if read_full(reader, &mut high)? < 2 {
                return Err("truncated .npy header".into());
            }
            let len = u32::from_le_bytes([prefix[8], prefix[9], high[0], high[1]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        v => return Err(format!("unsupported .npy version {v}.{}", prefix[7])),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "the .npy header is {header_len} bytes long (at most {MAX_HEADER_BYTES} accepted)"
        ));
    }
    let mut header = vec![0u8; header_len];
    if read_full(reader, &mut header)? < header_len {
        return Err("truncated .npy header".into());
    }
    let header = std::str::from_utf8(&header).map_err(|_| "the .npy header is not text")?;
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
                "dtype '{other}' is not supported (expected little-endian float32 '<f4' or float64 '<f8')"
            ))
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &e| acc.checked_mul(e))
        .ok_or_else(|| format!("the element count of shape {shape:?} overflows"))?;
    let payload = count
        .checked_mul(width)
        .ok_or_else(|| format!("the byte size of shape {shape:?} overflows"))?;
    let too_short =
        |held: u64| format!("shape {shape:?} needs {payload} bytes of data, the file holds {held}");
    if let Some(size) = size {
        let held = size.saturating_sub((header_start + header_len) as u64);
        if held != payload as u64 {
            return Err(too_short(held));
        }
    }
    let mut chunk = vec![0u8; 1 << 16];
    let mut held = 0u64;
    let data = if width == 4 {
        let mut data = Vec::new();
        data.try_reserve_exact(count)
            .map_err(|_| format!("out of memory: shape {shape:?} needs {payload} bytes"))?;
        while data.len() < count {
            let want = ((count - data.len()) * 4).min(chunk.len());
            let got = read_full(reader, &mut chunk[..want])?;
            held += got as u64;
            if got < want {
                return Err(too_short(held));
            }
            data.extend(
                chunk[..got]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Data::F32(data)
    } else {
        let mut data = Vec::new();
        data.try_reserve_exact(count)
            .map_err(|_| format!("out of memory: shape {shape:?} needs {payload} bytes"))?;
        while data.len() < count {
            let want = ((count - data.len()) * 8).min(chunk.len());
            let got = read_full(reader, &mut chunk[..want])?;
            held += got as u64;
            if got < want {
                return Err(too_short(held));
            }
            data.extend(chunk[..got].chunks_exact(8).map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b)
            }));
        }
        Data::F64(data)
    };
    if read_full(reader, &mut chunk[..1])? > 0 {
        return Err(format!(
            "shape {shape:?} needs {payload} bytes of data, the file holds more"
        ));
    }
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

/// The `.npy` preamble (magic, version, header length, header) of a float32 array of `shape`.
pub fn header(shape: &[usize]) -> Vec<u8> {
    header_with_descr("<f4", shape)
}

/// The preamble of an array of numpy dtype `descr` (e.g. `<f8`).
pub fn header_with_descr(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that magic + version + length + header is a multiple of 64, the header ending in '\n'.
    let padded = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        format!("{dict}{}\n", " ".repeat(pad))
    };
    let mut out = Vec::with_capacity(128);
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
    out
}

/// Writes a float32 array of `shape` (its values in C order) to `out`.
pub fn write(
    out: &mut impl Write,
    shape: &[usize],
    values: impl ExactSizeIterator<Item = f32>,
) -> std::io::Result<()> {
    let count: Option<usize> = shape.iter().try_fold(1usize, |a, &e| a.checked_mul(e));
    if count != Some(values.len()) {
        return Err(std::io::Error::other(format!(
            "{} values for shape {shape:?}",
            values.len()
        )));
    }
    out.write_all(&header(shape))?;
    for x in values {
        out.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Serializes a float32 array as `.npy` bytes (tests use it).
#[cfg(test)]
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec fails only on a length mismatch, which is the caller's bug.
    write(&mut out, shape, data.iter().copied()).expect("data matches the shape");
    out
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
            assert_eq!(
                back,
                Array {
                    shape,
                    data: Data::F32(data)
                }
            );
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
        let array = parse(&bytes).unwrap();
        assert_eq!(array.data, Data::F64(vec![1.5, -2.0]));
        assert!(array.is_f64());
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
        // Without a known length (a pipe), short and long payloads are still caught.
        let mut short = &good[..good.len() - 1];
        assert!(read_from(&mut short, None)
            .unwrap_err()
            .contains("holds 15"));
        let mut long = good.clone();
        long.push(0);
        assert!(read_from(&mut &long[..], None)
            .unwrap_err()
            .contains("holds more"));
        assert_eq!(
            read_from(&mut &good[..], None).unwrap(),
            parse(&good).unwrap()
        );
        // A header claiming more than it could hold is refused before its bytes are read.
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&bytes).unwrap_err().contains("header is"));
    }

    #[test]
    fn rounding_names_the_first_overflowing_element() {
        let array = Array {
            shape: vec![2, 3],
            data: Data::F32(vec![1.0, 65504.0, f32::INFINITY, f32::NAN, 65520.0, 1e6]),
        };
        // f16: 65504 is its largest value, 65520 rounds past it; inf and NaN pass through.
        let err = array.round_to::<half::f16>().unwrap_err();
        assert!(
            err.contains("element [1, 1]") && err.contains("f16"),
            "{err}"
        );
        let bf = array.round_to::<half::bf16>().unwrap();
        assert!(bf.as_slice()[2].is_infinite() && bf.as_slice()[3].is_nan());
        assert_eq!(bf.as_slice()[1].to_f32(), 65536.0);
        let wide = Array {
            shape: vec![2],
            data: Data::F64(vec![1.0, 1e39]),
        };
        let err = wide.round_to::<half::bf16>().unwrap_err();
        assert!(err.contains("element [1]") && err.contains("bf16"), "{err}");
    }
}
