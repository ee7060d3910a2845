//! The output files of one command, written all-or-nothing.
//!
//! Three steps, so that nothing is computed for a run that cannot deliver and nothing half-done is left:
//! 1. [`OutputPlan::add`], before any input is read: each destination is resolved to an absolute path
//!    (symlinks in its directory resolved), two flags naming the same file are rejected, and a
//!    destination that is a directory, or whose directory is a file, is rejected.
//! 2. [`OutputPlan::reserve`], after the inputs are checked and before computing: the missing
//!    directories are created and an empty temporary file is created next to each destination
//!    (`.NAME.tmp-PID-N`), which proves that the directory is writable.
//! 3. [`Transaction::write`] fills the temporaries, and [`Transaction::commit`], once every output is
//!    written, renames them into place.
//!
//! On any failure, and whenever a transaction is dropped uncommitted, every temporary, every
//! destination this run created and every directory it created is removed. A file the user already
//! had at a destination is only ever replaced by the final rename: if a later rename of the same commit
//! fails, destinations that were new are removed again, but one that replaced an existing file keeps
//! the new content (the old one is gone; restoring it would need a backup copy of every existing
//! destination). A process killed mid-run can leave `.tmp-` files behind.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::npy;

/// One destination: the output it receives, the flag that named it, the path as given and the path
/// it resolves to.
struct Destination {
    output: &'static str,
    flag: &'static str,
    given: PathBuf,
    /// Absolute, with the existing part of its directory canonicalized.
    resolved: PathBuf,
    /// Ancestors of `resolved` that do not exist yet, outermost first.
    missing_dirs: Vec<PathBuf>,
}

/// Destinations checked so far (step 1).
#[derive(Default)]
pub struct OutputPlan {
    destinations: Vec<Destination>,
}

/// `path` as an absolute path whose existing directories are canonical, and the directories on the
/// way to it that do not exist yet. Fails when `path` has no file name, when an existing ancestor is
/// not a directory, or when `path` itself is a directory.
fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let shown = path.display();
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name.to_os_string(),
        _ => return Err(format!("{shown}: not a file name")),
    };
    let absolute = std::env::current_dir()
        .map_err(|e| format!("{shown}: cannot resolve the current directory: {e}"))?
        .join(path);
    let parent = absolute.parent().unwrap_or(&absolute).to_path_buf();
    // The longest prefix of the parent that exists, canonicalized; the rest is appended as written
    // (directories that do not exist yet cannot be symlinks, so `..` can be applied lexically).
    let mut existing = parent.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        match (existing.parent(), existing.components().next_back()) {
            (Some(up), Some(last)) => {
                rest.push(last);
                existing = up;
            }
            _ => break,
        }
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| format!("{shown}: cannot resolve {}: {e}", existing.display()))?;
    if !resolved.is_dir() {
        return Err(format!(
            "{shown}: {} is not a directory",
            resolved.display()
        ));
    }
    let mut missing_dirs = Vec::new();
    for component in rest.into_iter().rev() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
                missing_dirs.pop();
            }
            other => {
                resolved.push(other);
                missing_dirs.push(resolved.clone());
            }
        }
    }
    resolved.push(name);
    if resolved.is_dir() {
        return Err(format!("{shown}: is a directory"));
    }
    Ok((resolved, missing_dirs))
}

impl OutputPlan {
    /// Adds `path`, given by `--flag`, as the destination of `output` (the name [`Transaction::write`]
    /// takes), rejecting it if another output goes to the same file. Its directory must exist.
    pub fn add(
        &mut self,
        output: &'static str,
        flag: &'static str,
        path: &Path,
    ) -> Result<(), String> {
        self.add_with(output, flag, path, false)
    }

    /// As [`OutputPlan::add`], for a file in an output directory that is created if missing.
    pub fn add_in_dir(
        &mut self,
        output: &'static str,
        flag: &'static str,
        dir: &Path,
        file: &str,
    ) -> Result<(), String> {
        self.add_with(output, flag, &dir.join(file), true)
    }

    fn add_with(
        &mut self,
        output: &'static str,
        flag: &'static str,
        path: &Path,
        create_dirs: bool,
    ) -> Result<(), String> {
        let (resolved, missing_dirs) = resolve(path).map_err(|e| format!("--{flag} {e}"))?;
        if let Some(other) = self.destinations.iter().find(|d| d.resolved == resolved) {
            return Err(format!(
                "--{} {} and --{flag} {} are the same file: give each output its own path",
                other.flag,
                other.given.display(),
                path.display()
            ));
        }
        if let (false, Some(first)) = (create_dirs, missing_dirs.first()) {
            return Err(format!(
                "--{flag} {}: directory {} does not exist",
                path.display(),
                first.display()
            ));
        }
        self.destinations.push(Destination {
            output,
            flag,
            given: path.to_path_buf(),
            resolved,
            missing_dirs,
        });
        Ok(())
    }

    /// Creates the missing directories and one empty temporary per destination (step 2).
    pub fn reserve(self) -> Result<Transaction, String> {
        let mut transaction = Transaction::default();
        for destination in self.destinations {
            let flag = destination.flag;
            let shown = destination.given.display();
            for dir in &destination.missing_dirs {
                match std::fs::create_dir(dir) {
                    Ok(()) => transaction.created_dirs.push(dir.clone()),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
                    Err(e) => {
                        return Err(format!(
                            "--{flag} {shown}: cannot create {}: {e}",
                            dir.display()
                        ))
                    }
                }
            }
            let dest = destination.resolved;
            if dest.is_dir() {
                return Err(format!("--{flag} {shown}: is a directory"));
            }
            let existed = std::fs::symlink_metadata(&dest).is_ok();
            let temp = create_temporary(&dest)
                .map_err(|e| format!("--{flag} {shown}: cannot write there: {e}"))?;
            transaction.files.push(Reserved {
                output: destination.output,
                flag,
                given: destination.given,
                dest,
                temp,
                existed,
                written: false,
            });
        }
        Ok(transaction)
    }
}

/// Distinguishes the temporaries of one process (tests run commands on several threads at once).
static TEMPORARIES: AtomicUsize = AtomicUsize::new(0);

/// Creates a new, empty `.NAME.tmp-PID-N` next to `dest`, never opening an existing file.
fn create_temporary(dest: &Path) -> std::io::Result<PathBuf> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    loop {
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let temp = dest.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(_) => return Ok(temp),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One reserved output.
struct Reserved {
    output: &'static str,
    flag: &'static str,
    given: PathBuf,
    dest: PathBuf,
    temp: PathBuf,
    /// A file (or link) was at `dest` when the temporary was reserved.
    existed: bool,
    written: bool,
}

/// Reserved outputs (steps 2 and 3). Dropped uncommitted, it removes everything it created.
#[derive(Default)]
pub struct Transaction {
    files: Vec<Reserved>,
    /// Directories this run created, outermost first.
    created_dirs: Vec<PathBuf>,
    committed: bool,
}

impl Transaction {
    /// Writes `output` (as named in [`OutputPlan::add`]) as a float32 `.npy` of `shape`.
    pub fn write(
        &mut self,
        output: &str,
        shape: &[usize],
        values: impl ExactSizeIterator<Item = f32>,
    ) -> Result<(), String> {
        let file = self
            .files
            .iter_mut()
            .find(|f| f.output == output)
            .ok_or_else(|| format!("internal error: no file reserved for {output}"))?;
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::new(File::create(&file.temp)?);
            npy::write(&mut out, shape, values)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write().map_err(|e| {
            format!(
                "--{} {}: cannot write: {e}",
                file.flag,
                file.given.display()
            )
        })?;
        file.written = true;
        Ok(())
    }

    /// Renames every temporary into place, once all are written (step 3).
    pub fn commit(mut self) -> Result<(), String> {
        if let Some(file) = self.files.iter().find(|f| !f.written) {
            return Err(format!("internal error: {} was never written", file.output));
        }
        for i in 0..self.files.len() {
            let file = &self.files[i];
            if let Err(e) = std::fs::rename(&file.temp, &file.dest) {
                let message = format!(
                    "--{} {}: cannot write: {e}",
                    file.flag,
                    file.given.display()
                );
                // Undo the renames done so far where they created a file; Drop does the rest.
                for done in &self.files[..i] {
                    if !done.existed {
                        let _ = std::fs::remove_file(&done.dest);
                    }
                }
                self.files.drain(..i);
                return Err(message);
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for file in &self.files {
            let _ = std::fs::remove_file(&file.temp);
        }
        // Innermost first; a directory that is not empty (it held something already) stays.
        for dir in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TempDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_same_file_under_two_names_is_rejected() {
        let dir = TempDir::new("outputs-same");
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        let mut plan = OutputPlan::default();
        plan.add("y", "out", &dir.0.join("a.npy")).unwrap();
        for other in ["a.npy", "./a.npy", "sub/../a.npy", "sub/./../a.npy"] {
            let err = plan.add("lse", "lse", &dir.0.join(other)).unwrap_err();
            assert!(err.contains("same file"), "{other}: {err}");
        }
        // Through a directory that does not exist yet, too.
        let err = plan
            .add_in_dir("dq", "out-dir", &dir.0.join("new/.."), "a.npy")
            .unwrap_err();
        assert!(err.contains("same file"), "{err}");
        plan.add("lse", "lse", &dir.0.join("sub/a.npy")).unwrap();
    }

    #[test]
    fn destinations_are_checked_when_planned() {
        let dir = TempDir::new("outputs-check");
        std::fs::create_dir(dir.0.join("d.npy")).unwrap();
        std::fs::write(dir.0.join("file"), b"x").unwrap();
        let mut plan = OutputPlan::default();
        let cases = [
            (dir.0.join("d.npy"), "is a directory"),
            (dir.0.join("missing/y.npy"), "does not exist"),
            (dir.0.join("file/y.npy"), "not a directory"),
            (dir.0.join(".."), "not a file name"),
        ];
        for (path, why) in cases {
            let err = plan.add("y", "out", &path).unwrap_err();
            assert!(err.starts_with("--out ") && err.contains(why), "{err}");
        }
        let err = plan
            .add_in_dir("dq", "out-dir", &dir.0.join("file"), "dq.npy")
            .unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        // A missing output directory is fine: it is created on reserve (and removed again on drop).
        plan.add_in_dir("dq", "out-dir", &dir.0.join("new/deeper"), "dq.npy")
            .unwrap();
        assert!(!dir.0.join("new").exists());
        let transaction = plan.reserve().unwrap();
        assert!(dir.0.join("new/deeper").is_dir());
        drop(transaction);
        assert_eq!(names(&dir.0), ["d.npy", "file"]);
    }

    #[test]
    fn a_failed_commit_removes_what_the_run_created_and_keeps_what_it_did_not() {
        let dir = TempDir::new("outputs-commit");
        let existing = dir.0.join("old.npy");
        std::fs::write(&existing, b"the user's file").unwrap();
        let mut plan = OutputPlan::default();
        plan.add_in_dir("a", "out-dir", &dir.0.join("out"), "a.npy")
            .unwrap();
        plan.add_in_dir("b", "out-dir", &dir.0.join("out"), "b.npy")
            .unwrap();
        plan.add("c", "out", &existing).unwrap();
        let mut transaction = plan.reserve().unwrap();
        for output in ["a", "b", "c"] {
            transaction
                .write(output, &[2], [1.0, 2.0].into_iter())
                .unwrap();
        }
        // Something takes b's place between the checks and the commit: its rename fails after a's
        // succeeded.
        std::fs::create_dir(dir.0.join("out/b.npy")).unwrap();
        std::fs::write(dir.0.join("out/b.npy/inside"), b"x").unwrap();
        let err = transaction.commit().unwrap_err();
        assert!(err.contains("b.npy"), "{err}");
        // a (created by the run) is gone again, no temporary is left, the user's file is untouched.
        assert_eq!(names(&dir.0.join("out")), ["b.npy"]);
        assert_eq!(names(&dir.0), ["old.npy", "out"]);
        assert_eq!(std::fs::read(&existing).unwrap(), b"the user's file");
    }

    #[test]
    fn a_commit_puts_every_output_in_place() {
        let dir = TempDir::new("outputs-ok");
        std::fs::write(dir.0.join("y.npy"), b"old").unwrap();
        let mut plan = OutputPlan::default();
        plan.add("y", "out", &dir.0.join("y.npy")).unwrap();
        plan.add_in_dir("dq", "out-dir", &dir.0.join("g"), "dq.npy")
            .unwrap();
        let mut transaction = plan.reserve().unwrap();
        // Uncommitted outputs are not visible; an unwritten one stops the commit.
        transaction.write("y", &[1], [3.0].into_iter()).unwrap();
        assert_eq!(std::fs::read(dir.0.join("y.npy")).unwrap(), b"old");
        assert!(transaction.write("lse", &[1], [3.0].into_iter()).is_err());
        transaction
            .write("dq", &[2, 1], [1.0, 2.0].into_iter())
            .unwrap();
        transaction.commit().unwrap();
        assert_eq!(names(&dir.0), ["g", "y.npy"]);
        assert_eq!(names(&dir.0.join("g")), ["dq.npy"]);
        let y = npy::read(&dir.0.join("y.npy")).unwrap();
        assert_eq!(y.data, npy::Data::F32(vec![3.0]));
    }
}
