//! ed25519 signatures over a bundle's manifest (which pins the model by sha256, so one
//! signature covers both). The runtime verifies the manifest's bytes as read, before parsing
//! anything. Keys are text files: `ed25519-secret <64 hex>` (the 32-byte seed, owner-only) and
//! `ed25519-public <64 hex>`; the signature file is `manifest.sig`: `ed25519 <key id> <128 hex>`.
//! ed25519-dalek does the cryptography.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::hex;
use crate::persist::{read, write_atomically};
use crate::{Error, Result};

/// The signature beside `manifest.json`.
pub const SIGNATURE_FILE: &str = "manifest.sig";

fn key_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Short id of a public key: the first 16 hex digits of its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&key.to_bytes()[..8])
}

/// A fresh key pair from the operating system's randomness.
pub fn generate_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| Error::Io {
        path: "getrandom".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `<stem>.key` (secret, mode 0600 on Unix) and `<stem>.pub`; refuses to overwrite.
pub fn write_key_pair(
    stem: &Path,
    key: &SigningKey,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let secret = stem.with_extension("key");
    let public = stem.with_extension("pub");
    for path in [&secret, &public] {
        if path.exists() {
            return Err(key_error(path, "exists; refusing to overwrite a key"));
        }
    }
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_secret(
        &secret,
        format!("ed25519-secret {}\n", hex(&key.to_bytes())).as_bytes(),
    )?;
    let verifying = key.verifying_key();
    write_atomically(
        &public,
        format!("ed25519-public {}\n", hex(&verifying.to_bytes())).as_bytes(),
    )?;
    Ok((secret, public))
}

/// Creates the secret key file owner-only from the start (never readable by others, not even
/// briefly) and never over an existing file.
fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_tagged<const N: usize>(path: &Path, tag: &str) -> Result<[u8; N]> {
    let bytes = read(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| key_error(path, "not a text key file"))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(t), Some(value), None) if t == tag => unhex::<N>(value)
            .ok_or_else(|| key_error(path, format!("{tag}: expected {} hex digits", 2 * N))),
        _ => Err(key_error(path, format!("expected one line `{tag} <hex>`"))),
    }
}

/// Reads a secret key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_tagged::<32>(
        path,
        "ed25519-secret",
    )?))
}

/// Reads a public key file.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let bytes = read_tagged::<32>(path, "ed25519-public")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| key_error(path, "not a valid ed25519 public key"))
}

/// The signature file's text for `message`.
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    let signature = key.sign(message);
    format!(
        "ed25519 {} {}\n",
        key_id(&key.verifying_key()),
        hex(&signature.to_bytes())
    )
}

/// Checks a signature file's text against `message` with any of `keys`; returns the id of the
/// key that verified it.
pub fn verify(
    keys: &[VerifyingKey],
    message: &[u8],
    signature_text: &[u8],
    path: &Path,
) -> Result<String> {
    let bad = |reason: String| Error::Signature {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::str::from_utf8(signature_text).map_err(|_| bad("not a text signature file".into()))?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let [scheme, id, value] = words[..] else {
        return Err(bad("expected `ed25519 <key id> <signature hex>`".into()));
    };
    if scheme != "ed25519" {
        return Err(bad(format!("unknown signature scheme {scheme:?}")));
    }
    let bytes =
        unhex::<64>(value).ok_or_else(|| bad("the signature is not 128 hex digits".into()))?;
    let signature = Signature::from_bytes(&bytes);
    for key in keys {
        if key.verify_strict(message, &signature).is_ok() {
            return Ok(key_id(key));
        }
    }
    let trusted: Vec<String> = keys.iter().map(key_id).collect();
    Err(bad(format!(
        "the manifest's signature (by key {id}) does not verify with the trusted key(s) {}: \
         the bundle was modified or signed by another key",
        trusted.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_the_signed_bytes_with_the_signing_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let sig = sign(&key, b"manifest");
        let p = Path::new("manifest.sig");
        let id = verify(
            &[other.verifying_key(), key.verifying_key()],
            b"manifest",
            sig.as_bytes(),
            p,
        )
        .unwrap();
        assert_eq!(id, key_id(&key.verifying_key()));
        assert!(verify(&[key.verifying_key()], b"manifesT", sig.as_bytes(), p).is_err());
        assert!(verify(&[other.verifying_key()], b"manifest", sig.as_bytes(), p).is_err());
        let torn = &sig.as_bytes()[..sig.len() - 10];
        assert!(verify(&[key.verifying_key()], b"manifest", torn, p).is_err());
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("site");
        let key = generate_key().unwrap();
        let (secret, public) = write_key_pair(&stem, &key).unwrap();
        assert_eq!(
            read_signing_key(&secret).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(read_verifying_key(&public).unwrap(), key.verifying_key());
        assert!(write_key_pair(&stem, &key).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A secret key is not a public key.
        assert!(read_verifying_key(&secret).is_err());
    }
}
