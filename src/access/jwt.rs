//! zhiva access tokens: RS256 JWTs from the zhiva auth service, verified with its
//! public key(s), then sorted into access, refresh and one-off auth tokens by
//! their claims alone (the service marks none of them).

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde_json::{Map, Value};

/// The issuer the zhiva auth service signs with.
pub const ISSUER: &str = "zhiva.ai";
/// Clock skew allowed on `exp` and `nbf` (seconds).
pub const LEEWAY: u64 = 30;
/// The longest lifetime (`exp - iat`) of an access token: the auth service
/// gives access tokens 24 h and refresh tokens 30 days.
pub const MAX_ACCESS_LIFETIME: u64 = 86_400;
/// RSA modulus sizes ring verifies RS256 with.
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 8192;

/// One RSA public key of the auth service.
#[derive(Clone)]
pub struct PublicKey {
    key: DecodingKey,
    /// Where it came from and its size, for the start-up log.
    pub about: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.about)
    }
}

/// Reads every public key in `files`; each file may hold several (key rotation).
pub fn load_keys(files: &[PathBuf]) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for f in files {
        let text = std::fs::read(f)
            .map_err(|e| format!("cannot read the JWT public key {}: {e}", f.display()))?;
        keys.extend(parse_pem(&text, f)?);
    }
    if keys.is_empty() {
        return Err(
            "--inbound-auth zhiva-jwt needs the auth service's public key: --jwt-public-key FILE"
                .into(),
        );
    }
    Ok(keys)
}

/// The RSA public keys (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo) in a PEM text.
pub fn parse_pem(text: &[u8], file: &Path) -> Result<Vec<PublicKey>, String> {
    let at = file.display();
    if text.windows(26).any(|w| w == b"-----BEGIN RSA PUBLIC KEY-") {
        return Err(format!(
            "{at}: an \"RSA PUBLIC KEY\" (PKCS#1) block; give it as a \"PUBLIC KEY\": \
             openssl rsa -RSAPublicKey_in -in {at} -pubout -out jwt_pub.pem"
        ));
    }
    let mut keys = Vec::new();
    for (i, section) in <(SectionKind, Vec<u8>)>::pem_slice_iter(text).enumerate() {
        let (kind, der) = section.map_err(|e| format!("{at}: not readable PEM ({e:?})"))?;
        match kind {
            SectionKind::PublicKey => {}
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(format!(
                    "{at} holds a private key; the proxy needs only the public one \
                     (openssl rsa -in {at} -pubout -out jwt_pub.pem), and the private key \
                     should stay with the auth service"
                ))
            }
            _ => continue,
        }
        let (n, e) = rsa_spki(&der).map_err(|why| format!("{at}: key {}: {why}", i + 1))?;
        let bits = bit_len(n);
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(format!(
                "{at}: key {} is RSA-{bits}; RS256 is verified with {MIN_BITS} to {MAX_BITS}-bit \
                 keys only (a 512-bit key, as an old zhiva README made, can be factored in hours): \
                 make a new pair for the auth service with \
                 `openssl genrsa -out jwt_priv.pem 2048 && openssl rsa -in jwt_priv.pem -pubout -out jwt_pub.pem`",
                i + 1
            ));
        }
        keys.push(PublicKey {
            key: DecodingKey::from_rsa_raw_components(n, e),
            about: format!("{at} (RSA-{bits})"),
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "{at} holds no \"-----BEGIN PUBLIC KEY-----\" block (the auth service's jwt_pub.pem)"
        ));
    }
    Ok(keys)
}

/// The modulus and exponent of an RSA SubjectPublicKeyInfo (DER).
pub fn rsa_spki(der: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (spki, rest) = tlv(der, 0x30).ok_or("not a DER SubjectPublicKeyInfo")?;
    if !rest.is_empty() {
        return Err("bytes after the key");
    }
    let (alg, rest) = tlv(spki, 0x30).ok_or("no algorithm identifier")?;
    let (oid, _) = tlv(alg, 0x06).ok_or("no algorithm identifier")?;
    if oid != RSA_ENCRYPTION {
        return Err("not an RSA key (RS256 needs RSA)");
    }
    let (bits, _) = tlv(rest, 0x03).ok_or("no key bits")?;
    let pkcs1 = match bits.split_first() {
        Some((0, k)) => k,
        _ => return Err("malformed key bits"),
    };
    let (seq, _) = tlv(pkcs1, 0x30).ok_or("not an RSAPublicKey")?;
    let (n, rest) = tlv(seq, 0x02).ok_or("no modulus")?;
    let (e, _) = tlv(rest, 0x02).ok_or("no exponent")?;
    let strip = |x: &'_ [u8]| -> usize { x.iter().take_while(|&&b| b == 0).count() };
    Ok((&n[strip(n)..], &e[strip(e)..]))
}

/// One DER element with tag `tag`: its content and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

fn bit_len(n: &[u8]) -> usize {
    n.first()
        .map_or(0, |&b| n.len() * 8 - b.leading_zeros() as usize)
}

/// What a verified access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `username`, else `name`: who the audit trail names.
    pub caller: String,
    /// `studyUID`: the only study it may run inferences on.
    pub study: Option<String>,
    /// `pacs`: the only server it may read from (a server's UUID or its `uri`).
    pub pacs: Option<String>,
    /// `aud`: the origins it may be used from.
    pub aud: Vec<String>,
    /// `scope`, space-separated, when an issuer adds one.
    pub scope: Option<Vec<String>>,
}

/// Why a token is not accepted (never quoting the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// Not RS256 (`none`, HS256, ...).
    Algorithm,
    /// The signature does not verify with any configured key.
    Signature,
    /// `iss` is missing or not `zhiva.ai`.
    Issuer,
    /// A one-off auth token, for the auth service's token exchange.
    AuthToken,
    /// A refresh token, for the auth service's refresh.
    RefreshToken,
    /// Not a JWT, or a claim of the wrong type.
    Malformed(&'static str),
}

impl Refusal {
    /// For the error message.
    pub fn describe(&self) -> String {
        match self {
            Refusal::Expired => "the access token has expired; refresh it".into(),
            Refusal::NotYetValid => "the access token is not valid yet (nbf)".into(),
            Refusal::Algorithm => "the token is not signed with RS256".into(),
            Refusal::Signature => {
                "the token's signature does not verify with the auth service's key".into()
            }
            Refusal::Issuer => format!("the token's issuer is not {ISSUER}"),
            Refusal::AuthToken => {
                "a one-off auth token is not an access token; exchange it at the auth service first"
                    .into()
            }
            Refusal::RefreshToken => {
                "a refresh token is not an access token; send the access token it refreshes".into()
            }
            Refusal::Malformed(why) => format!("the token is malformed: {why}"),
        }
    }
}

/// Verifies `token` (RS256 only, issuer `zhiva.ai`, `exp`/`nbf` with [`LEEWAY`])
/// against each key, then checks that it is an access token.
pub fn verify(token: &str, keys: &[PublicKey]) -> Result<Token, Refusal> {
    // Pinned: `alg: none`, HS256 keyed with the public key and every other
    // algorithm are refused before any key is tried.
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    v.validate_aud = false; // the auth service's own `aud` rule is applied by the caller
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss"]);
    let mut refusal = Refusal::Signature;
    for k in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v) {
            Ok(data) => return access(&data.claims),
            Err(e) => {
                refusal = match e.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature => Refusal::Expired,
                    ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        Refusal::Algorithm
                    }
                    ErrorKind::InvalidIssuer => Refusal::Issuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => Refusal::Issuer,
                    ErrorKind::MissingRequiredClaim(_) => Refusal::Malformed("no exp"),
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                        Refusal::Malformed("not a JWT")
                    }
                    // An unknown `alg` (`none`) fails to parse the header.
                    ErrorKind::Json(_) => Refusal::Malformed(
                        "its header or claims are not a zhiva token's (an alg other than RS256, such as none?)",
                    ),
                    _ => Refusal::Malformed("unreadable"),
                };
                // Only a bad signature may go better with the next key.
                break;
            }
        }
    }
    Err(refusal)
}

/// The claims of a verified token, if it is an access token.
///
/// The auth service signs all three kinds with the same key, issuer and
/// claims, so they are told apart like this: an auth token carries
/// `tokenServer` or `refreshServer` (where to exchange it); a token that lives
/// longer than [`MAX_ACCESS_LIFETIME`] (`exp - iat`) is a refresh token; a
/// token without `iat` cannot be told apart and is refused.
pub fn access(claims: &Map<String, Value>) -> Result<Token, Refusal> {
    if claims.contains_key("tokenServer") || claims.contains_key("refreshServer") {
        return Err(Refusal::AuthToken);
    }
    let num = |k: &str| claims.get(k).and_then(Value::as_u64);
    let (Some(exp), Some(iat)) = (num("exp"), num("iat")) else {
        return Err(Refusal::Malformed(
            "no iat, so it cannot be told from a refresh token",
        ));
    };
    if exp.saturating_sub(iat) > MAX_ACCESS_LIFETIME {
        return Err(Refusal::RefreshToken);
    }
    let text = |k: &'static str| -> Result<Option<String>, Refusal> {
        match claims.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Refusal::Malformed(k)),
        }
    };
    let aud = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Refusal::Malformed("aud"))?,
        Some(_) => return Err(Refusal::Malformed("aud")),
    };
    let name = |k| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    Ok(Token {
        caller: name("username")
            .or_else(|| name("name"))
            .unwrap_or("(unnamed)")
            .chars()
            .take(128)
            .collect(),
        study: text("studyUID")?,
        pacs: text("pacs")?,
        aud,
        scope: text("scope")?.map(|s| s.split_whitespace().map(str::to_string).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// Shaped like the auth service's tokens (auth-server/utils/jwt.ts and the
    /// helpers that call it): `expiresIn` 24h for access and auth tokens, 30d
    /// for refresh tokens; auth tokens name the exchange endpoints.
    #[test]
    fn kinds_by_claims() {
        let base = json!({"name": "Alice", "username": "alice", "canEditResource": false,
                          "iss": ISSUER, "iat": 1_000, "exp": 1_000 + 86_400});
        let t = access(&claims(base.clone())).unwrap();
        assert_eq!((t.caller.as_str(), t.study.as_deref()), ("alice", None));
        let mut refresh = base.clone();
        refresh["exp"] = json!(1_000 + 30 * 86_400);
        assert_eq!(access(&claims(refresh)), Err(Refusal::RefreshToken));
        let mut auth = base.clone();
        auth["tokenServer"] = json!("https://localhost/auth/generate-access-token");
        auth["refreshServer"] = json!("https://localhost/auth/refresh-token");
        auth["pacs"] = json!("https://localhost/zhiva/pacs");
        assert_eq!(access(&claims(auth)), Err(Refusal::AuthToken));
        let mut no_iat = base.clone();
        no_iat.as_object_mut().unwrap().remove("iat");
        assert!(matches!(
            access(&claims(no_iat)),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn scope_claims() {
        let c = json!({"name": "Bob", "iat": 0, "exp": 60, "studyUID": "1.2.3",
                       "pacs": "https://pacs/dicom-web", "aud": "https://viewer.zhiva.ai",
                       "accessTypes": ["read"], "scope": "read:models openid"});
        let t = access(&claims(c)).unwrap();
        assert_eq!(t.caller, "Bob");
        assert_eq!(t.study.as_deref(), Some("1.2.3"));
        assert_eq!(t.pacs.as_deref(), Some("https://pacs/dicom-web"));
        assert_eq!(t.aud, vec!["https://viewer.zhiva.ai"]);
        assert_eq!(t.scope.unwrap(), vec!["read:models", "openid"]);
        // A scope claim of the wrong type fails closed.
        let c = json!({"iat": 0, "exp": 60, "studyUID": ["1.2.3"]});
        assert_eq!(access(&claims(c)), Err(Refusal::Malformed("studyUID")));
        let c = json!({"iat": 0, "exp": 60, "aud": 5});
        assert_eq!(access(&claims(c)), Err(Refusal::Malformed("aud")));
    }

    #[test]
    fn der_reader() {
        // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0, SEQUENCE { INTEGER n, INTEGER e } } }
        let mut n = vec![0x00, 0xc1];
        n.extend(std::iter::repeat_n(0x55, 255));
        let mut rsa = vec![0x02, 0x82, 0x01, 0x01];
        rsa.extend(&n);
        rsa.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut seq = vec![0x30, 0x82];
        seq.extend((rsa.len() as u16).to_be_bytes());
        seq.extend(&rsa);
        let mut bits = vec![0x03, 0x82];
        bits.extend((seq.len() as u16 + 1).to_be_bytes());
        bits.push(0);
        bits.extend(&seq);
        let alg = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut body = alg.to_vec();
        body.extend(&bits);
        let mut spki = vec![0x30, 0x82];
        spki.extend((body.len() as u16).to_be_bytes());
        spki.extend(&body);
        let (m, e) = rsa_spki(&spki).unwrap();
        assert_eq!((bit_len(m), e), (2048, &[1, 0, 1][..]));
        for cut in 0..spki.len() {
            assert!(rsa_spki(&spki[..cut]).is_err());
        }
        let mut ec = spki.clone();
        ec[12] = 0x02;
        assert_eq!(rsa_spki(&ec), Err("not an RSA key (RS256 needs RSA)"));
    }

    #[test]
    fn pem_problems_are_explained() {
        let f = Path::new("k.pem");
        let private = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse_pem(private, f).unwrap_err().contains("private key"));
        let pkcs1 = b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n";
        assert!(parse_pem(pkcs1, f)
            .unwrap_err()
            .contains("-RSAPublicKey_in"));
        assert!(parse_pem(b"hello", f).unwrap_err().contains("no \""));
    }
}
