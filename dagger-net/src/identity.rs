//! A process's credentials in a cluster: its certificate, key and the cluster CA.

use crate::NetError;
use std::path::{Path, PathBuf};

/// The prefix of [`Identity::to_text`]'s encoding, carrying its format version.
const TEXT_PREFIX: &str = "dagger-identity-v1:";

/// A node's TLS identity: a leaf certificate and its private key (PEM), and the PEM of the
/// cluster's certificate authority that every peer's certificate must chain to.
///
/// Cheap to clone (three short strings). Produced by
/// [`ClusterCa::issue`](crate::ClusterCa::issue) (feature `quic`) or read back from files or
/// from its [text form](Identity::to_text). A cluster without a certificate authority hands
/// its processes the [empty identity](Identity::empty) instead.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The cluster CA's certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .finish()
    }
}

impl Identity {
    /// An identity without credentials (every field empty): what a cluster that has no
    /// certificate authority hands its processes, for a transport that authenticates peers
    /// by other means or not at all. QUIC refuses it. Survives
    /// [`to_text`](Identity::to_text)/[`from_text`](Identity::from_text); files holding it
    /// are refused by [`from_files`](Identity::from_files).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether this is the [empty identity](Identity::empty).
    pub fn is_empty(&self) -> bool {
        self.cert_pem.is_empty() && self.key_pem.is_empty() && self.ca_pem.is_empty()
    }

    /// Reads an identity from three PEM files. Costs three small file reads; the contents are
    /// checked for a PEM header only (full parsing happens when a transport uses them).
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, NetError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| NetError::Identity(format!("cannot read {}: {e}", p.display())))
        };
        let id = Identity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: read(ca)?,
        };
        id.check_shape()?;
        Ok(id)
    }

    /// Writes `cert.pem`, `key.pem` and `ca.pem` into `dir` (which must exist) and returns
    /// their paths in that order. Overwrites existing files. On Unix `key.pem` is always
    /// mode 0600: the key is written into a new private file that then replaces any old
    /// `key.pem` (whatever that file's mode was), so it is never readable by others, not
    /// even for a moment.
    pub fn write_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), NetError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ca = dir.join("ca.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        std::fs::write(&ca, &self.ca_pem)?;
        Ok((cert, key, ca))
    }

    /// Encodes the identity as one line of ASCII (no whitespace);
    /// [`Identity::from_text`] reverses it. The text contains the private key: hand it
    /// over only through a private channel (a pipe, a 0600 file), never in an environment
    /// variable or a command line, which other processes can read.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(
            TEXT_PREFIX.len()
                + 2 * (self.cert_pem.len() + self.key_pem.len() + self.ca_pem.len())
                + 2,
        );
        s.push_str(TEXT_PREFIX);
        for (i, part) in [&self.cert_pem, &self.key_pem, &self.ca_pem]
            .iter()
            .enumerate()
        {
            if i > 0 {
                s.push(':');
            }
            for b in part.bytes() {
                s.push(hex_digit(b >> 4));
                s.push(hex_digit(b & 0xf));
            }
        }
        s
    }

    /// Decodes a text produced by [`Identity::to_text`].
    pub fn from_text(s: &str) -> Result<Self, NetError> {
        let body = s.trim().strip_prefix(TEXT_PREFIX).ok_or_else(|| {
            NetError::Identity(format!(
                "encoded identity does not start with {TEXT_PREFIX:?}"
            ))
        })?;
        let parts: Vec<&str> = body.split(':').collect();
        let [cert, key, ca] = parts.as_slice() else {
            return Err(NetError::Identity(format!(
                "encoded identity has {} parts, expected 3",
                parts.len()
            )));
        };
        let id = Identity {
            cert_pem: decode_hex(cert)?,
            key_pem: decode_hex(key)?,
            ca_pem: decode_hex(ca)?,
        };
        if !id.is_empty() {
            id.check_shape()?;
        }
        Ok(id)
    }

    /// Checks that each part looks like PEM, so that a wrong file is reported early.
    fn check_shape(&self) -> Result<(), NetError> {
        for (what, pem) in [
            ("certificate", &self.cert_pem),
            ("private key", &self.key_pem),
            ("CA certificate", &self.ca_pem),
        ] {
            if !pem.contains("-----BEGIN ") {
                return Err(NetError::Identity(format!("the {what} is not PEM")));
            }
        }
        Ok(())
    }
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xf)])
}

fn decode_hex(s: &str) -> Result<String, NetError> {
    let bytes = s.as_bytes();
    if bytes.len() % 2 != 0 {
        return Err(NetError::Identity(
            "odd-length hex in encoded identity".into(),
        ));
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(NetError::Identity(format!(
            "invalid hex digit {:?} in encoded identity",
            char::from(c)
        ))),
    };
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks_exact(2) {
        out.push(val(pair[0])? << 4 | val(pair[1])?);
    }
    String::from_utf8(out).map_err(|_| NetError::Identity("encoded identity is not UTF-8".into()))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> Result<(), NetError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A fresh file created 0600 (never an existing one, whose mode `open` would keep),
    // renamed over the old one once complete.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> Result<(), NetError> {
    std::fs::write(path, contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n".into(),
        }
    }

    #[test]
    fn text_round_trips_and_is_one_token() {
        let id = sample();
        let v = id.to_text();
        assert!(!v.chars().any(char::is_whitespace));
        assert_eq!(Identity::from_text(&v).unwrap(), id);
    }

    #[test]
    fn the_empty_identity_round_trips_as_text_but_not_as_files() {
        let empty = Identity::empty();
        assert!(empty.is_empty() && !sample().is_empty());
        assert_eq!(Identity::from_text(&empty.to_text()).unwrap(), empty);
        let half = Identity {
            cert_pem: String::new(),
            ..sample()
        };
        assert!(Identity::from_text(&half.to_text()).is_err());
        let dir = std::env::temp_dir().join(format!("dagger-net-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k, a) = empty.write_files(&dir).unwrap();
        assert!(Identity::from_files(&c, &k, &a).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_rejects_garbage() {
        assert!(matches!(
            Identity::from_text("nope"),
            Err(NetError::Identity(_))
        ));
        let v = sample().to_text();
        assert!(Identity::from_text(&v[..v.len() - 1]).is_err());
        assert!(Identity::from_text(&format!("{v}:00")).is_err());
        assert!(Identity::from_text(&v.replace(":", "zz:")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_key_file_becomes_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dagger-net-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let id = sample();
        id.write_files(&dir).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key.pem is {:o}", mode & 0o777);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), id.key_pem);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("dagger-net-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = sample();
        let (c, k, a) = id.write_files(&dir).unwrap();
        assert_eq!(Identity::from_files(&c, &k, &a).unwrap(), id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&k).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&c, "not pem").unwrap();
        assert!(matches!(
            Identity::from_files(&c, &k, &a),
            Err(NetError::Identity(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
