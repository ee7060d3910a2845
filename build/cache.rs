//! Build step caching: a content key over everything that determines a step's output, and a small
//! directory of outputs stored under their key.
//!
//! The fatbin does not depend on the cargo profile, so it is cached once per target directory
//! (`target/gsdpa-cache`, see `Paths::shared_cache`) and shared by dev, test and release builds: `cargo
//! clippy` and `cargo test --release` run nvcc once. The emulator's objects are cached per profile, each
//! next to its own key file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Result;

/// A hash of everything that determines a build step's output (FNV-1a, 64 bit: stable across Rust
/// versions, unlike std's hasher). A step is skipped when the key stored next to its output matches.
#[derive(Clone)]
pub struct ContentKey(u64);

impl ContentKey {
    pub fn new() -> ContentKey {
        ContentKey(0xcbf2_9ce4_8422_2325)
    }

    pub fn add_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn add_str(&mut self, s: &str) -> &mut Self {
        self.add_bytes(s.as_bytes())
    }

    pub fn add_strs(&mut self, items: &[String]) -> &mut Self {
        for s in items {
            self.add_str(s);
        }
        self
    }

    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        self.add_str(&path.display().to_string());
        Ok(self.add_bytes(&bytes))
    }

    // The emulator's per-object keys live next to its objects (they differ between profiles).
    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    pub fn matches(&self, stored: &Path) -> bool {
        fs::read_to_string(stored).is_ok_and(|s| s.trim() == format!("{:016x}", self.0))
    }

    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    pub fn store(&self, path: &Path) -> Result<()> {
        fs::write(path, format!("{:016x}\n", self.0))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Build outputs stored under their content key in the shared cache directory. Entries are written to a
/// temporary name and renamed, so a reader never sees half a file; the newest few per kind are kept.
pub struct CacheEntry {
    dir: PathBuf,
    kind: String,
    stem: String,
}

impl CacheEntry {
    /// How many keys per kind stay cached (e.g. several GSDPA_CUDA_ARCHS settings, or a branch switch).
    const KEEP: usize = 4;

    pub fn new(dir: &Path, kind: &str, key: &ContentKey) -> CacheEntry {
        CacheEntry {
            dir: dir.to_path_buf(),
            kind: kind.to_string(),
            stem: format!("{kind}-{:016x}", key.0),
        }
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    /// Copies the cached files (by extension) to their destinations; false when the entry is incomplete.
    pub fn fetch(&self, files: &[(&Path, &str)]) -> bool {
        files.iter().all(|(_, ext)| self.path(ext).is_file())
            && files
                .iter()
                .all(|(dest, ext)| fs::copy(self.path(ext), dest).is_ok())
    }

    pub fn store(&self, files: &[(&Path, &str)]) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        for (source, ext) in files {
            let tmp = self.path(&format!("{ext}.tmp{}", std::process::id()));
            fs::copy(source, &tmp).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            fs::rename(&tmp, self.path(ext))
                .map_err(|e| format!("writing {}: {e}", self.path(ext).display()))?;
        }
        self.evict_old();
        Ok(())
    }

    /// Removes all but the KEEP most recently written keys of this kind (best effort).
    fn evict_old(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}-", self.kind);
        let mut stems: Vec<(std::time::SystemTime, String)> = Vec::new();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_prefix(&prefix).and_then(|r| r.split('.').next()) else {
                continue;
            };
            let stem = format!("{prefix}{stem}");
            let modified = entry.metadata().and_then(|m| m.modified());
            if let Ok(modified) = modified {
                match stems.iter_mut().find(|(_, s)| *s == stem) {
                    Some((newest, _)) => *newest = (*newest).max(modified),
                    None => stems.push((modified, stem.clone())),
                }
            }
            files.push((stem, entry.path()));
        }
        stems.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        let keep: Vec<&String> = stems.iter().take(Self::KEEP).map(|(_, s)| s).collect();
        for (stem, path) in files {
            if !keep.contains(&&stem) && stem != self.stem {
                let _ = fs::remove_file(path);
            }
        }
    }
}
