//! End-to-end tests of `gsdpa decode`, in-process on files in a temporary directory.

use std::path::PathBuf;

use rand::{rngs::StdRng, RngExt, SeedableRng};

use super::parse_int_npy;
use crate::npy;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gsdpa-decode-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }

    fn write(&self, file: &str, shape: &[usize], data: &[f32]) -> String {
        let path = self.path(file);
        std::fs::write(&path, npy::to_bytes(shape, data)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An int32 `.npy` as numpy writes it.
fn int_npy(shape: &[usize], data: &[i32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<i4', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn run(args: &[&str]) -> Result<(), crate::CliError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    crate::run(&args)
}

#[test]
fn int_npy_round_trip_and_rejections() {
    let a = parse_int_npy(&int_npy(&[2, 3], &[1, -2, 3, 4, 5, i32::MAX])).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, vec![1, -2, 3, 4, 5, i32::MAX]);
    assert!(parse_int_npy(&npy::to_bytes(&[2], &[1.0, 2.0]))
        .unwrap_err()
        .contains("int32"));
    let mut truncated = int_npy(&[2], &[1, 2]);
    truncated.pop();
    assert!(parse_int_npy(&truncated).is_err());
}

#[test]
fn decode_matches_the_reference_backend_and_rejects_bad_tables() {
    let dir = TempDir::new("paged");
    let (b, sq, hq, hkv, d, nb, bs, mb) = (
        2usize, 1usize, 4usize, 2usize, 64usize, 6usize, 16usize, 3usize,
    );
    let mut rng = StdRng::seed_from_u64(3);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let q = dir.write("q.npy", &[b, sq, hq, d], &random(b * sq * hq * d));
    let kc = dir.write("kc.npy", &[nb, bs, hkv, d], &random(nb * bs * hkv * d));
    let vc = dir.write("vc.npy", &[nb, bs, hkv, d], &random(nb * bs * hkv * d));
    let g = dir.write("g.npy", &[b, sq, hq, d], &random(b * sq * hq * d));
    let bt = dir.path("bt.npy");
    std::fs::write(&bt, int_npy(&[b, mb], &[4, 1, -1, 0, 5, 2])).unwrap();
    let common = |out: &str, backend: &str| -> Vec<String> {
        [
            "decode",
            "--backend",
            backend,
            "--dtype",
            "bf16",
            "--q",
            &q,
            "--k-cache",
            &kc,
            "--v-cache",
            &vc,
            "--block-table",
            &bt,
            "--cache-seqlens",
            "17,40",
            "--g",
            &g,
            "--gate",
            "elementwise",
            "--act",
            "silu",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (y_ref, y_emu) = (dir.path("y_ref.npy"), dir.path("y_emu.npy"));
    let lse = dir.path("lse.npy");
    let mut args = common(&y_ref, "reference");
    args.extend(["--lse".to_string(), lse.clone()]);
    crate::run(&args).unwrap();
    let reference = npy::read(std::path::Path::new(&y_ref)).unwrap();
    assert_eq!(reference.shape, vec![b, sq, hq, d]);
    assert_eq!(
        npy::read(std::path::Path::new(&lse)).unwrap().shape,
        vec![b, hq, sq]
    );
    if crate::backends::Backend::open("emulator").is_ok() {
        let mut args = common(&y_emu, "emulator");
        args.extend(["--num-splits".to_string(), "2".to_string()]);
        crate::run(&args).unwrap();
        let emulated = npy::read(std::path::Path::new(&y_emu)).unwrap();
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        let (npy::Data::F32(emulated), npy::Data::F32(reference)) =
            (&emulated.data, &reference.data)
        else {
            panic!("the CLI writes float32 .npy");
        };
        for (x, y) in emulated.iter().zip(reference) {
            err += ((x - y) as f64).powi(2);
            norm += (*y as f64).powi(2);
        }
        assert!(
            (err / norm).sqrt() < 1e-2,
            "emulator vs reference: {}",
            (err / norm).sqrt()
        );
    }

    // Bad input: exit 2, nothing written.
    let bad_out = dir.path("bad.npy");
    let mut long = common(&bad_out, "reference");
    let at = long.iter().position(|a| a == "17,40").unwrap();
    long[at] = "17,49".into(); // above capacity 3 * 16
    assert_eq!(crate::run(&long).unwrap_err().code, 2);
    long[at] = "33,40".into(); // sequence 0's third block is -1
    let err = crate::run(&long).unwrap_err();
    assert_eq!(err.code, 2);
    assert!(err.message.contains("block_table"), "{}", err.message);
    long[at] = "17".into(); // one length for two sequences
    assert_eq!(crate::run(&long).unwrap_err().code, 2);
    assert!(!std::path::Path::new(&bad_out).exists());
    let err = run(&["decode", "--q", &q]).unwrap_err();
    assert_eq!(err.code, 2);
    if crate::backends::Backend::open("cuda").is_err() {
        // No GPU here: an unavailable backend is exit 2 as well, nothing written.
        let err = crate::run(&common(&bad_out, "cuda")).unwrap_err();
        assert_eq!(err.code, 2, "{}", err.message);
        assert!(!std::path::Path::new(&bad_out).exists());
    }
}
