//! The PKI of a dev cluster: one CA, the API server's serving certificate, an
//! admin client certificate and the service-account signing key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files written by [`generate`].
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

/// Generates a fresh PKI into `dir`. The serving certificate carries the IP SAN
/// 127.0.0.1 and the in-cluster names of the `kubernetes` Service.
pub fn generate(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "devcluster-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let leaf =
        |sans: Vec<String>, cn: &str, org: Option<&str>, usage| -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };

    let sans = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec();
    let (serving_cert, serving_key) = leaf(
        sans,
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (admin_cert, admin_key) = leaf(
        Vec::new(),
        "devcluster-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let sa = KeyPair::generate()?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    for (path, pem) in [
        (&pki.ca_cert, ca.pem()),
        (&pki.serving_cert, serving_cert),
        (&pki.serving_key, serving_key),
        (&pki.admin_cert, admin_cert),
        (&pki.admin_key, admin_key),
        (&pki.sa_key, sa.serialize_pem()),
        (&pki.sa_pub, sa.public_key_pem()),
    ] {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pki)
}
