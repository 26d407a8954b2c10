//! The listener's certificate: loaded at start, loaded again on SIGHUP (a bad
//! new pair leaves the old one serving), and watched for expiry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use serde_json::{json, Value};

use crate::time::{from_civil, now_secs, rfc3339_secs};

/// From this many days before its end, the certificate is announced as expiring.
const WARN_DAYS: i64 = 14;

/// The certificate and key in force, and where they come from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The earliest notAfter in the chain, seconds since the epoch.
    not_after: Option<i64>,
}

impl Tls {
    /// Loads the pair, or says what is wrong with it; warns if the certificate is expiring.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        let tls = Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(load(cert, key)?),
        };
        tls.warn();
        Ok(tls)
    }

    /// SIGHUP: loads the pair again; on failure the previous one keeps serving.
    pub fn reload(&self) {
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                match self.current.write() {
                    Ok(mut c) => *c = loaded,
                    Err(p) => *p.into_inner() = loaded,
                }
                log::info!("TLS certificate {} reloaded", self.cert.display());
                self.warn();
            }
            Err(e) => log::error!("{e}; the previous certificate stays in use"),
        }
    }

    fn loaded(&self) -> Loaded {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.loaded().config
    }

    /// Seconds until the certificate expires (negative once it has), if its date could be read.
    pub fn seconds_left(&self) -> Option<i64> {
        let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
        self.loaded().not_after.map(|t| t - now)
    }

    fn state(&self) -> &'static str {
        match self.seconds_left() {
            None => "unknown",
            Some(s) if s <= 0 => "expired",
            Some(s) if s < WARN_DAYS * 86_400 => "expiring",
            Some(_) => "ok",
        }
    }

    /// The certificate on the status page: file, end of validity, state.
    pub fn status(&self) -> Value {
        let not_after = self.loaded().not_after;
        json!({
            "certificate": self.cert.display().to_string(),
            "notAfter": not_after.map(|t| rfc3339_secs(u64::try_from(t).unwrap_or(0))),
            "secondsLeft": self.seconds_left(),
            "state": self.state(),
        })
    }

    fn warn(&self) {
        let (Some(left), Some(end)) = (self.seconds_left(), self.loaded().not_after) else {
            return log::warn!(
                "cannot read the expiry date of the TLS certificate {}",
                self.cert.display()
            );
        };
        let end = rfc3339_secs(u64::try_from(end).unwrap_or(0));
        let fix = "replace it (scripts/make-cert.sh makes a self-signed pair) and reload (systemctl reload model-proxy, or SIGHUP)";
        match self.state() {
            "expired" => log::warn!(
                "the TLS certificate {} EXPIRED on {end} ({} days ago): clients refuse it; {fix}",
                self.cert.display(),
                -left / 86_400
            ),
            "expiring" => log::warn!(
                "the TLS certificate {} expires on {end}, in {} days; {fix}",
                self.cert.display(),
                left / 86_400
            ),
            _ => log::info!("TLS certificate {} valid until {end}", self.cert.display()),
        }
    }
}

/// Reads the chain and key into a server configuration (TLS 1.2 and 1.3 only).
fn load(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let hint = "make a pair with scripts/make-cert.sh, or serve plain HTTP with --no-tls";
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS certificate {}: {e}; {hint}",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; {hint}",
            cert.display()
        ));
    }
    let not_after = certs.iter().filter_map(|c| not_after(c)).min();
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}; {hint}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit together: {e}"))?;
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// The notAfter of a DER X.509 certificate, in seconds since the epoch:
/// Certificate -> tbsCertificate -> validity -> notAfter (RFC 5280 4.1), walked
/// by hand because this one date is all the proxy needs from it.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = expect(der, 0x30)?;
    let (tbs, _) = expect(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = expect(rest, 0xA0)?.1; // [0] version
    }
    rest = expect(rest, 0x02)?.1; // serialNumber
    rest = expect(rest, 0x30)?.1; // signature
    rest = expect(rest, 0x30)?.1; // issuer
    let (validity, _) = expect(rest, 0x30)?;
    let (_, _, after) = element(validity)?; // notBefore
    match element(after)? {
        (0x17, t, _) => time(t, 2),
        (0x18, t, _) => time(t, 4),
        _ => None,
    }
}

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(t: &[u8], year_digits: usize) -> Option<i64> {
    let (digits, z) = t.split_at_checked(year_digits + 10)?;
    if z != b"Z" || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0i64, |a, &b| a * 10 + i64::from(b - b'0'));
    let mut year = num(&digits[..year_digits]);
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let f: Vec<i64> = digits[year_digits..].chunks(2).map(num).collect();
    let ok =
        (1..=12).contains(&f[0]) && (1..=31).contains(&f[1]) && f[2] < 24 && f[3] < 60 && f[4] < 61;
    ok.then(|| from_civil(year, f[0], f[1], f[2], f[3], f[4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short length.
    fn el(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    }

    fn cert(not_after: &[u8], after_tag: u8, version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(0xA0, &el(0x02, &[2])));
        }
        tbs.extend(el(0x02, &[1, 2, 3]));
        tbs.extend(el(0x30, &el(0x06, &[1, 2])));
        tbs.extend(el(0x30, &[]));
        let validity = [el(0x17, b"260101000000Z"), el(after_tag, not_after)].concat();
        tbs.extend(el(0x30, &validity));
        tbs.extend(el(0x30, &[])); // subject
        el(0x30, &[el(0x30, &tbs), el(0x30, &[])].concat())
    }

    #[test]
    fn reads_not_after() {
        let want = from_civil(2027, 3, 4, 5, 6, 7);
        assert_eq!(not_after(&cert(b"270304050607Z", 0x17, true)), Some(want));
        assert_eq!(
            not_after(&cert(b"20270304050607Z", 0x18, false)),
            Some(want)
        );
        let old = from_civil(1999, 12, 31, 23, 59, 59);
        assert_eq!(not_after(&cert(b"991231235959Z", 0x17, true)), Some(old));
    }

    #[test]
    fn rejects_what_is_not_a_date() {
        for bad in [
            &b"2703040506Z"[..],
            b"270304050607",
            b"271304050607Z",
            b"27030405060xZ",
        ] {
            assert_eq!(not_after(&cert(bad, 0x17, true)), None, "{bad:?}");
        }
        assert_eq!(not_after(&cert(b"270304050607Z", 0x04, true)), None);
        let whole = cert(b"270304050607Z", 0x17, true);
        for cut in 0..whole.len() {
            assert_eq!(not_after(&whole[..cut]), None);
        }
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
