//! Backups that can rebuild the laptop they came from: the backup file (see `backup.rs`) plus
//! this laptop's key files, encrypted with a passphrase in the age format.
//!
//! | part | layout |
//! |------|--------|
//! | file | age v1 (`age-encryption.org/v1` header), one scrypt (passphrase) recipient |
//! | plaintext | `FSKEYS1\n`, u32 big-endian N, N bytes of JSON `{"files": {NAME: TEXT}}`, then the plain backup file's bytes |
//!
//! NAME is one of [`KEY_FILES`]: the credential (this laptop's private key), the deployment CA
//! (its private key, on the coordinator) and `fieldsync.toml`. A backup of a laptop holding
//! private keys is written only encrypted, or without them when asked (`--no-keys`).

use crate::mesh;
use age::secrecy::SecretString;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Files of the data directory a backup with keys carries.
pub const KEY_FILES: [&str; 3] = [mesh::CREDENTIAL_FILE, mesh::CA_FILE, "fieldsync.toml"];

const MAGIC: &[u8] = b"FSKEYS1\n";
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Why a backup could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The passphrase file is empty.
    #[error("the passphrase file {0} is empty: write the passphrase on its first line")]
    EmptyPassphrase(PathBuf),
    /// Decryption failed: the passphrase does not open this backup.
    #[error("the passphrase does not open {0}: check the passphrase file (nothing was restored)")]
    WrongPassphrase(PathBuf),
    /// The file is not an encrypted fieldsync backup.
    #[error("{path} is not an encrypted fieldsync backup: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The key files present in `dir` (name → contents).
pub fn key_files(dir: &Path) -> Result<BTreeMap<String, String>, KeysError> {
    let mut out = BTreeMap::new();
    for name in KEY_FILES {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                out.insert(name.to_string(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(out)
}

/// True when `dir` holds a private key (a credential or the deployment CA).
pub fn holds_private_keys(dir: &Path) -> bool {
    dir.join(mesh::CREDENTIAL_FILE).exists() || dir.join(mesh::CA_FILE).exists()
}

/// The passphrase: the first line of `path` (without its line end); an empty one is refused.
pub fn read_passphrase(path: &Path) -> Result<SecretString, KeysError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(KeysError::EmptyPassphrase(path.to_path_buf()));
    }
    Ok(SecretString::from(line.to_string()))
}

/// True when `path` starts like an age file (an encrypted backup).
pub fn is_sealed(path: &Path) -> Result<bool, KeysError> {
    let mut head = [0u8; 21];
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let n = f.read(&mut head).map_err(io(path))?;
    Ok(&head[..n] == AGE_MAGIC)
}

/// Writes `out` (atomically, mode 0600): the plain backup `plain` and `files`, encrypted with
/// `passphrase`.
pub fn seal(
    plain: &Path,
    files: &BTreeMap<String, String>,
    passphrase: SecretString,
    out: &Path,
) -> Result<(), KeysError> {
    let json = serde_json::json!({ "files": files }).to_string();
    let mut payload = Vec::new();
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&(json.len() as u32).to_be_bytes());
    payload.extend_from_slice(json.as_bytes());
    let mut backup = std::fs::File::open(plain).map_err(io(plain))?;
    backup.read_to_end(&mut payload).map_err(io(plain))?;
    let mut sealed = Vec::new();
    let mut w = age::Encryptor::with_user_passphrase(passphrase)
        .wrap_output(&mut sealed)
        .map_err(io(out))?;
    w.write_all(&payload).map_err(io(out))?;
    w.finish().map_err(io(out))?;
    crate::fsutil::write_private_atomic(out, &sealed).map_err(io(out))
}

/// Decrypts `sealed` with `passphrase`: writes the plain backup to `plain_out` (mode 0600)
/// and returns the key files it carried.
pub fn open(
    sealed: &Path,
    passphrase: SecretString,
    plain_out: &Path,
) -> Result<BTreeMap<String, String>, KeysError> {
    let f = std::fs::File::open(sealed).map_err(io(sealed))?;
    let bad = |why: String| KeysError::Format {
        path: sealed.to_path_buf(),
        why,
    };
    let d =
        age::Decryptor::new_buffered(std::io::BufReader::new(f)).map_err(|e| bad(e.to_string()))?;
    let identity = age::scrypt::Identity::new(passphrase);
    let mut r = d
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::Io(e) => io(sealed)(e),
            age::DecryptError::UnknownFormat | age::DecryptError::InvalidHeader => {
                bad(e.to_string())
            }
            _ => KeysError::WrongPassphrase(sealed.to_path_buf()),
        })?;
    let mut payload = Vec::new();
    r.read_to_end(&mut payload)
        .map_err(|_| KeysError::WrongPassphrase(sealed.to_path_buf()))?;
    let rest = payload
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("no fieldsync keys inside".into()))?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("cut off".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad("cut off".into()));
    }
    let (json, backup) = rest.split_at(len);
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("key list: {e}")))?;
    let mut files = BTreeMap::new();
    for (name, text) in v["files"].as_object().into_iter().flatten() {
        if KEY_FILES.contains(&name.as_str()) {
            if let Some(t) = text.as_str() {
                files.insert(name.clone(), t.to_string());
            }
        }
    }
    crate::fsutil::write_private_atomic(plain_out, backup).map_err(io(plain_out))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_backups_open_with_their_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"backup bytes").unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            mesh::CA_FILE.to_string(),
            "{\"ca_key\":\"secret\"}".to_string(),
        );
        let sealed = dir.path().join("sealed");
        seal(
            &plain,
            &files,
            SecretString::from("right".to_string()),
            &sealed,
        )
        .unwrap();
        assert!(is_sealed(&sealed).unwrap());
        assert!(!is_sealed(&plain).unwrap());
        let raw = std::fs::read(&sealed).unwrap();
        assert!(
            !raw.windows(6).any(|w| w == b"secret"),
            "the key is not in clear"
        );
        let out = dir.path().join("out");
        assert!(matches!(
            open(&sealed, SecretString::from("wrong".to_string()), &out),
            Err(KeysError::WrongPassphrase(_))
        ));
        assert!(!out.exists());
        let got = open(&sealed, SecretString::from("right".to_string()), &out).unwrap();
        assert_eq!(got, files);
        assert_eq!(std::fs::read(&out).unwrap(), b"backup bytes");
    }
}
