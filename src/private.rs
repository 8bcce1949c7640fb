//! What MaiRust writes is for its own user only: the database holds password hashes, DKIM
//! keys (plain without a master key), session tokens and message bodies.
//!
//! [`restrict_new_files`] sets the process umask to `077` before anything is written, so
//! every file is created `0600` and every directory `0700`, whoever creates it (SQLite and
//! its `-wal`/`-shm` files, the blob store, certificates, dumps). [`tighten`] fixes what an
//! earlier version (or a umask of `022`) left readable by others, with a log line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes every file and directory this process creates from now on private to its user.
/// Called first thing in `main`, before any thread or file exists.
pub fn restrict_new_files() {
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Removes the group and other permissions of `path` (a file or a directory), if it exists
/// and has any, and logs that it did. Returns whether it changed anything. A path owned by
/// another user (a mounted volume) is left as it is, with a warning.
pub fn tighten(path: &Path) -> std::io::Result<bool> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    let private = mode & !0o077;
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)) {
        if error.kind() != std::io::ErrorKind::PermissionDenied {
            return Err(std::io::Error::new(
                error.kind(),
                format!("cannot make {} private: {error}", path.display()),
            ));
        }
        // Not ours (a volume owned by another user): say so and go on.
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "readable by other users and not ours to change: chmod it to {:o}",
            private
        );
        return Ok(false);
    }
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:o}"),
        now = format!("{private:o}"),
        "made private: it was readable by other users"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighten_removes_group_and_other_bits_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("db");
        std::fs::write(&file, b"x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(tighten(&file).expect("tighten"));
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tighten(&file).expect("again"), "nothing left to change");
        assert!(!tighten(&dir.path().join("absent")).expect("absent"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert!(tighten(dir.path()).expect("dir"));
        let mode = std::fs::metadata(dir.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
