//! The cluster's certificate authority.

use crate::{Identity, NetError};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// The DNS name every node certificate carries and every client verifies: nodes are
/// addressed by IP, so verification pins the cluster's CA, not a host name.
pub const SERVER_NAME: &str = "dagger.cluster";

/// A self-signed certificate authority that issues the identities of one cluster.
///
/// The driver generates one per cluster (or loads one with [`ClusterCa::from_pem`]) and
/// issues an [`Identity`] to itself and to every worker. Any process holding the CA key
/// can mint identities, so keep [`ClusterCa::key_pem`] private.
pub struct ClusterCa {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn id_err(what: &str) -> impl FnOnce(rcgen::Error) -> NetError + '_ {
    move |e| NetError::Identity(format!("{what}: {e}"))
}

impl ClusterCa {
    /// Generates a fresh CA (ECDSA P-256) whose subject is `CN=<cluster_name>`. Costs one
    /// key generation and one signature (well under a millisecond).
    pub fn generate(cluster_name: &str) -> Result<Self, NetError> {
        let key = KeyPair::generate().map_err(id_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cluster_name);
        dn.push(DnType::OrganizationName, "dagger-rs cluster");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(id_err("self-signing the CA"))?;
        let cert_pem = cert.pem();
        Ok(ClusterCa {
            cert,
            key,
            cert_pem,
        })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`]. Identities
    /// it issues chain to the original certificate (same subject, same key).
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, NetError> {
        let key = KeyPair::from_pem(key).map_err(id_err("parsing the CA key"))?;
        let params = CertificateParams::from_ca_cert_pem(cert)
            .map_err(id_err("parsing the CA certificate"))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(NetError::Identity("the certificate is not a CA".into()));
        }
        // Re-signing the parsed parameters gives an issuer handle with the original subject
        // and key; the original PEM is what peers trust.
        let reissued = params
            .self_signed(&key)
            .map_err(id_err("the CA key does not match the certificate"))?;
        if reissued.der().is_empty() {
            return Err(NetError::Identity("empty CA certificate".into()));
        }
        Ok(ClusterCa {
            cert: reissued,
            key,
            cert_pem: cert.to_owned(),
        })
    }

    /// Issues an identity for `node_name`: a leaf certificate signed by this CA, valid for
    /// TLS client and server authentication, with the subject alternative names
    /// [`SERVER_NAME`] and `node_name` (a DNS name or an IP address). Costs one key
    /// generation and one signature.
    pub fn issue(&self, node_name: &str) -> Result<Identity, NetError> {
        let mut names = vec![SERVER_NAME.to_owned()];
        if node_name != SERVER_NAME {
            names.push(node_name.to_owned());
        }
        let mut params = CertificateParams::new(names).map_err(id_err("invalid node name"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(id_err("generating a node key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(id_err("signing the node certificate"))?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// The CA certificate, PEM (public; every node trusts it).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PEM (secret: it can mint identities).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}
