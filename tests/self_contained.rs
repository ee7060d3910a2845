//! The repository explains itself: no source file, doc or script points at notes outside it (the
//! design notes live in `docs/`), and no comment names a helper file that does not exist.

use std::path::{Path, PathBuf};

/// Directories and files whose text is checked, relative to the crate root.
const CHECKED: [&str; 12] = [
    "src",
    "kernels",
    "tests",
    "examples",
    "benches",
    "build",
    "scripts",
    "docs",
    ".ci",
    "README.md",
    "BENCHMARKS.md",
    "Cargo.toml",
];

/// Text that would point outside the repository or at files that do not exist (each spelled in two
/// pieces so that this file itself passes).
fn forbidden() -> Vec<String> {
    [["shared", "/notes"], [".helpers", "/"], ["runtime", ".cpp"]]
        .iter()
        .map(|parts| parts.concat())
        .collect()
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            // Captured tool logs are data, not prose.
            if p.file_name().is_some_and(|n| n == "testdata") {
                continue;
            }
            collect(&p, out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for name in CHECKED {
        collect(&root.join(name), &mut files);
    }
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let patterns = forbidden();
    let mut hits = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // binary
        };
        for (n, line) in text.lines().enumerate() {
            for pattern in &patterns {
                if line.contains(pattern.as_str()) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "references outside the repository:\n{}",
        hits.join("\n")
    );
}
