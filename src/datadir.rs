//! The data directory: the database (every account's SCRAM keys, the
//! offline messages), the generated TLS key and the admin socket. It is
//! private to the server's OS user: created 0700, its files 0600, and a
//! directory left more open (by an older version, or by hand) is fixed at
//! start, with a warning.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Make `dir` exist and be private, and make everything created from now
/// on by this process private too (umask 077: database segments,
/// snapshots and sockets are created later, by other code).
pub fn prepare(dir: &Path) -> Result<(), String> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .or_else(|e| {
                    // Created by someone else meanwhile: checked below.
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("cannot create data_dir {}: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("cannot read data_dir {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() && !m.file_type().is_symlink() => {
            return Err(format!("data_dir {} is not a directory", dir.display()));
        }
        Ok(_) => {}
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read data_dir {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("data_dir {} is not a directory", dir.display()));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        tracing::warn!(
            dir = %dir.display(),
            "data_dir belongs to another user; its permissions are left as they are"
        );
        return Ok(());
    }
    let mut fixed = 0usize;
    fix(dir, true, &mut fixed);
    walk(dir, &mut fixed);
    if fixed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            entries = fixed,
            "data_dir was readable by other users: permissions set to 0700 (directories) and 0600 (files)"
        );
    }
    Ok(())
}

/// Take the group and other bits off `path` if it has any.
fn fix(path: &Path, is_dir: bool, fixed: &mut usize) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let want = if is_dir { 0o700 } else { mode & 0o700 };
    if std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).is_ok() {
        *fixed += 1;
    }
}

fn walk(dir: &Path, fixed: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_symlink() {
            continue;
        }
        if t.is_dir() {
            fix(&p, true, fixed);
            walk(&p, fixed);
        } else {
            fix(&p, false, fixed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_and_fixes_open_directories() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        prepare(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o775)).unwrap();
        std::fs::write(d.join("sub/f"), b"secret").unwrap();
        std::fs::set_permissions(d.join("sub/f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare(&d).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("sub")), 0o700);
        assert_eq!(mode(&d.join("sub/f")), 0o600);
        // What is created afterwards is private too.
        std::fs::write(d.join("new"), b"x").unwrap();
        assert_eq!(mode(&d.join("new")), 0o600);
    }
}
