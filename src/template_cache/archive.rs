//! The archive of one cached repository: a deterministic gzipped tar of its
//! templates directory, cut into chunks small enough for one ConfigMap each.
//!
//! Deterministic (sorted entries, fixed times, modes and owners) so the same
//! commit packs to the same bytes, and so to the same content-addressed
//! ConfigMap names: a refresh that finds nothing new writes nothing.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Bytes of one chunk: a ConfigMap holds at most 1 MiB of data.
pub const CHUNK_BYTES: usize = 768 * 1024;
/// Most bytes one repository's archive may take (compressed), and most its
/// files may take unpacked is [`MAX_UNPACKED_BYTES`].
pub const MAX_ARCHIVE_BYTES: usize = 48 * 1024 * 1024;
/// Most bytes of files one archive may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;

/// The SHA-256 of `bytes`, lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A gzipped tar of the regular files below `root/<path>` (all of `root`
/// when `path` is unset), named relative to `root`, without `.git`
/// directories; symbolic links and other special files are left out.
pub fn pack(root: &Path, path: Option<&str>) -> io::Result<Vec<u8>> {
    let base = PathBuf::from(path.unwrap_or(""));
    let top = root.join(&base);
    if !top.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory of the repository", base.display()),
        ));
    }
    let mut files = Vec::new();
    walk(root, &base, &mut files)?;
    files.sort();
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for rel in files {
        let data = std::fs::read(root.join(&rel))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &rel, data.as_slice())?;
        if tar.get_ref().get_ref().len() > MAX_ARCHIVE_BYTES {
            return Err(too_big());
        }
    }
    let bytes = tar.into_inner()?.finish()?;
    if bytes.len() > MAX_ARCHIVE_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

fn too_big() -> io::Error {
    io::Error::other(format!(
        "its templates take more than {} MiB compressed, the cache's limit per repository; name a smaller `path`",
        MAX_ARCHIVE_BYTES / (1024 * 1024)
    ))
}

/// Adds the regular files below `root/rel` to `files`, relative to `root`.
fn walk(root: &Path, rel: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let kind = entry.file_type()?;
        let path = rel.join(entry.file_name());
        if kind.is_dir() {
            walk(root, &path, files)?;
        } else if kind.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Unpacks an archive of [`pack`] into `into` (created if missing). Refuses
/// entries other than files and directories, names that leave `into`, and
/// more than [`MAX_UNPACKED_BYTES`] of files.
pub fn unpack(bytes: &[u8], into: &Path) -> io::Result<()> {
    std::fs::create_dir_all(into)?;
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    archive.set_preserve_mtime(false);
    let mut total: u64 = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "archive entry {:?} is neither a file nor a directory",
                    entry.path()?
                ),
            ));
        }
        total = total.saturating_add(entry.size());
        if total > MAX_UNPACKED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "archive unpacks to more than its limit",
            ));
        }
        // `unpack_in` refuses names with `..` or a root.
        if !entry.unpack_in(into)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("archive entry {:?} leaves its directory", entry.path()?),
            ));
        }
    }
    Ok(())
}

/// `bytes` cut into [`CHUNK_BYTES`] pieces (one empty piece for no bytes).
pub fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(CHUNK_BYTES).collect()
}

/// Joins chunks and checks the result is `size` bytes with SHA-256 `sha256`.
pub fn join(
    chunks: impl IntoIterator<Item = Vec<u8>>,
    size: u64,
    sha256: &str,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    for chunk in chunks {
        bytes.write_all(&chunk)?;
    }
    if bytes.len() as u64 != size || digest(&bytes) != sha256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the cached archive is {} bytes with SHA-256 {}, its manifest says {size} bytes with {sha256}",
                bytes.len(),
                digest(&bytes)
            ),
        ));
    }
    Ok(bytes)
}

/// Reads at most `limit` bytes of `reader` (the tail of an error file).
pub fn read_tail(path: &Path, limit: usize) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let text = text.trim();
    let start = text.len().saturating_sub(limit);
    let start = (start..=text.len()).find(|i| text.is_char_boundary(*i))?;
    Some(text[start..].trim().to_owned()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("http/cves/a.yaml", "id: a\n");
        write("http/cves/b.yaml", "id: b\n");
        write("http/misc/c.yaml", "id: c\n");
        write("README.md", "readme\n");
        write(".git/HEAD", "ref: refs/heads/main\n");
        dir
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        walk(dir, Path::new(""), &mut out).unwrap();
        let mut names: Vec<String> = out.iter().map(|p| p.display().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_path_packs_its_files_under_their_repository_names_and_nothing_of_git() {
        let repo = repo();
        let bytes = pack(repo.path(), Some("http/cves")).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&bytes, out.path()).unwrap();
        assert_eq!(files(out.path()), ["http/cves/a.yaml", "http/cves/b.yaml"]);
        assert_eq!(
            std::fs::read_to_string(out.path().join("http/cves/b.yaml")).unwrap(),
            "id: b\n"
        );
        let whole = pack(repo.path(), None).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&whole, out.path()).unwrap();
        assert_eq!(
            files(out.path()),
            [
                "README.md",
                "http/cves/a.yaml",
                "http/cves/b.yaml",
                "http/misc/c.yaml"
            ]
        );
    }

    #[test]
    fn the_same_files_pack_to_the_same_bytes_and_a_change_to_others() {
        let repo = repo();
        let a = pack(repo.path(), None).unwrap();
        // Times of files do not count.
        std::fs::write(repo.path().join("README.md"), "readme\n").unwrap();
        assert_eq!(digest(&a), digest(&pack(repo.path(), None).unwrap()));
        std::fs::write(repo.path().join("README.md"), "changed\n").unwrap();
        assert_ne!(digest(&a), digest(&pack(repo.path(), None).unwrap()));
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let repo = repo();
        let e = pack(repo.path(), Some("nope/dir")).unwrap_err();
        assert!(e.to_string().contains("nope/dir"), "{e}");
    }

    #[test]
    fn chunks_join_back_and_a_wrong_digest_or_size_is_refused() {
        let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let parts: Vec<Vec<u8>> = chunks(&bytes).into_iter().map(<[u8]>::to_vec).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= CHUNK_BYTES));
        let sha = digest(&bytes);
        assert_eq!(
            join(parts.clone(), bytes.len() as u64, &sha).unwrap(),
            bytes
        );
        assert!(join(parts.clone(), bytes.len() as u64, &digest(b"x")).is_err());
        let mut short = parts;
        short.pop();
        assert!(join(short, bytes.len() as u64, &sha).is_err());
        assert_eq!(chunks(b"").len(), 1);
    }

    #[test]
    fn an_archive_that_leaves_its_directory_or_holds_a_link_is_refused() {
        let tar_with = |name: &str, kind: tar::EntryType| {
            let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_entry_type(kind);
            header.set_mode(0o644);
            // Bypass set_path's own checks: write the name as an attacker would.
            header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, io::empty()).unwrap();
            tar.into_inner().unwrap().finish().unwrap()
        };
        let out = tempfile::tempdir().unwrap();
        let into = out.path().join("x");
        assert!(unpack(&tar_with("../evil.yaml", tar::EntryType::Regular), &into).is_err());
        assert!(!out.path().join("evil.yaml").exists());
        assert!(unpack(&tar_with("link", tar::EntryType::Symlink), &into).is_err());
        assert!(unpack(b"not gzip", &into).is_err());
    }

    #[test]
    fn the_tail_of_an_error_file_is_its_last_bytes_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e");
        std::fs::write(&p, "Cloning into '/x'...\nfatal: repository not found\n\n").unwrap();
        assert_eq!(
            read_tail(&p, 28).as_deref(),
            Some("fatal: repository not found")
        );
        assert_eq!(
            read_tail(&p, 1000).as_deref(),
            Some("Cloning into '/x'...\nfatal: repository not found")
        );
        assert_eq!(read_tail(&dir.path().join("none"), 10), None);
    }
}
