//! A process's credentials in a cluster: its certificate, key and the cluster CA.

use crate::NetError;
use std::path::{Path, PathBuf};

/// The prefix of [`Identity::to_env_value`]'s encoding, carrying its format version.
const ENV_PREFIX: &str = "dagger-identity-v1:";

/// A node's TLS identity: a leaf certificate and its private key (PEM), and the PEM of the
/// cluster's certificate authority that every peer's certificate must chain to.
///
/// Cheap to clone (three short strings). Produced by
/// [`ClusterCa::issue`](crate::ClusterCa::issue) (feature `quic`) or read back from files or
/// an environment variable.
#[derive(Clone, PartialEq, Eq)]
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

    /// Writes `cert.pem`, `key.pem` (mode 0600 on Unix) and `ca.pem` into `dir` (which must
    /// exist) and returns their paths in that order. Overwrites existing files.
    pub fn write_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), NetError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let ca = dir.join("ca.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        std::fs::write(&ca, &self.ca_pem)?;
        Ok((cert, key, ca))
    }

    /// Encodes the identity as one line of ASCII (no whitespace), suitable for an
    /// environment variable; [`Identity::from_env_value`] reverses it. The value contains
    /// the private key: pass it only to processes you trust.
    pub fn to_env_value(&self) -> String {
        let mut s = String::with_capacity(
            ENV_PREFIX.len()
                + 2 * (self.cert_pem.len() + self.key_pem.len() + self.ca_pem.len())
                + 2,
        );
        s.push_str(ENV_PREFIX);
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

    /// Decodes a value produced by [`Identity::to_env_value`].
    pub fn from_env_value(s: &str) -> Result<Self, NetError> {
        let body = s.trim().strip_prefix(ENV_PREFIX).ok_or_else(|| {
            NetError::Identity(format!(
                "encoded identity does not start with {ENV_PREFIX:?}"
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
        id.check_shape()?;
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
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
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
    fn env_value_round_trips_and_is_one_token() {
        let id = sample();
        let v = id.to_env_value();
        assert!(!v.chars().any(char::is_whitespace));
        assert_eq!(Identity::from_env_value(&v).unwrap(), id);
    }

    #[test]
    fn env_value_rejects_garbage() {
        assert!(matches!(
            Identity::from_env_value("nope"),
            Err(NetError::Identity(_))
        ));
        let v = sample().to_env_value();
        assert!(Identity::from_env_value(&v[..v.len() - 1]).is_err());
        assert!(Identity::from_env_value(&format!("{v}:00")).is_err());
        assert!(Identity::from_env_value(&v.replace(":", "zz:")).is_err());
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
