//! Reading the small files a gateway is configured with (the config, keys, certificates,
//! password files) without trusting their size or their permissions.

use std::io::Read;
use std::path::Path;

/// The largest config, key, certificate or password file read: they are a few KB; a path
/// pointing at `/dev/zero` or a log file must not eat the gateway's memory.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// Reads `path` whole, refusing files larger than `limit` bytes (whatever `stat` says: a
/// device or a pipe has no size).
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut data = Vec::new();
    f.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KB; this is not the file meant here", limit / 1024),
        ));
    }
    Ok(data)
}

/// [`read_bounded`] with [`MAX_SMALL_FILE`], as UTF-8 text.
pub fn read_small_text(path: &Path) -> std::io::Result<String> {
    let data = read_bounded(path, MAX_SMALL_FILE)?;
    String::from_utf8(data).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Whether users other than the owner and the group may read `path`.
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o004 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_endless_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"key").unwrap();
        assert_eq!(read_bounded(&small, 10).unwrap(), b"key");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 11]).unwrap();
        let e = read_bounded(&big, 10).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // A device with no end is cut at the limit, not read until memory runs out.
        let e = read_bounded(Path::new("/dev/zero"), MAX_SMALL_FILE).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, b"k").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(readable_by_others(&f));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(!readable_by_others(&f));
    }
}
