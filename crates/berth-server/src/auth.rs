//! Who may call: the token rule both ingresses apply.
use tonic::{Request, Status};

pub(crate) fn check_token(expected: Option<&str>, req: &Request<()>) -> Result<(), Status> {
    let sent = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
    token_rule(expected, sent).map_err(Status::unauthenticated)
}

/// The rule both ingresses apply: with a token configured, callers send
/// `authorization: Bearer <token>`. The error is the message for the caller.
pub(crate) fn token_rule(expected: Option<&str>, authorization: Option<&str>) -> Result<(), &'static str> {
    let Some(expected) = expected.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err("wrong token: send the token the server was started with"),
        None => Err("this server needs a token: send `authorization: Bearer <token>`"),
    }
}

/// Equal, in a time that does not depend on where the first difference is (only on the length
/// of what was sent): a caller cannot find the token a byte at a time by timing answers.
pub(crate) fn same_secret(sent: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(sent.len() != expected.len());
    for (i, b) in sent.iter().enumerate() {
        diff |= b ^ expected.get(i % expected.len().max(1)).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        use super::{same_secret, token_rule};
        assert!(same_secret(b"s3cret", b"s3cret"));
        for wrong in [&b"s3creT"[..], b"s3cre", b"s3cret!", b"", b"S3cret"] {
            assert!(!same_secret(wrong, b"s3cret"), "{wrong:?}");
        }
        assert!(token_rule(Some("t"), Some("Bearer t")).is_ok());
        assert!(token_rule(Some("t"), Some("Bearer u")).is_err());
        assert!(token_rule(Some("t"), None).is_err());
        assert!(token_rule(None, None).is_ok());
    }
}
