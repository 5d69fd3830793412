//! Certificates generated at start: a throw-away CA and a server certificate
//! signed by it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::EmulatorError;

/// A server identity: certificate chain and key (PEM), plus the PEM of the
/// CA that clients must trust.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Server certificate first, then intermediates/CA (PEM).
    pub cert_chain_pem: String,
    /// Private key of the server certificate (PEM, PKCS#8).
    pub key_pem: String,
    /// Certificate(s) clients should trust (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity")
            .field("cert_chain_pem", &self.cert_chain_pem.len())
            .field("ca_pem", &self.ca_pem.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Generate a fresh CA and a server certificate for `names` (DNS names or
    /// IP addresses) signed by it.
    pub fn generate(names: &[String]) -> Result<TlsIdentity, EmulatorError> {
        Self::generate_inner(names, false)
    }

    /// Like [`TlsIdentity::generate`], but the server certificate expired
    /// long ago (valid only during the year 2000): for tests showing that
    /// clients refuse it.
    pub fn generate_expired(names: &[String]) -> Result<TlsIdentity, EmulatorError> {
        Self::generate_inner(names, true)
    }

    fn generate_inner(names: &[String], expired: bool) -> Result<TlsIdentity, EmulatorError> {
        let cert_err = |e: rcgen::Error| EmulatorError::Cert(e.to_string());

        let ca_key = KeyPair::generate().map_err(cert_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gimmm CCS emulator CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "gimmm");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).map_err(cert_err)?;

        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "gimmm CCS emulator");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(cert_err)?;

        let ca_pem = ca.pem();
        Ok(TlsIdentity {
            cert_chain_pem: format!("{}{}", cert.pem(), ca_pem),
            key_pem: key.serialize_pem(),
            ca_pem,
        })
    }
}
