//! The caller identity in Envoy's `x-forwarded-client-cert` (XFCC) header.
//!
//! The header is a comma-separated list of elements, one per proxy hop, each a
//! semicolon-separated list of `Key=value` pairs (`By`, `Hash`, `Cert`, `Chain`, `Subject`,
//! `URI`, `DNS`); a value holding `,`, `;` or `=` is double-quoted, with `"` inside escaped as
//! `\"`. Only the **last** element was written by the sidecar in front of this service, from
//! the certificate it verified:
//! - `SANITIZE_SET` replaces whatever the client sent with one element: the last one.
//! - `APPEND_FORWARD` appends its element to the client's header: everything before it is
//!   client-controlled, so it is never read, and the last element is found by scanning from the
//!   end, so that a client's unbalanced quote cannot swallow the sidecar's element.
//! - `SANITIZE` removes the header (callers are anonymous).
//! - `FORWARD_ONLY` and `ALWAYS_FORWARD_ONLY` pass the client's header on unverified: a sidecar
//!   in those modes must not be trusted (`--trust-forwarded-client-cert` off).

/// The identity of the last element: its `Subject` when not empty (`CN=batch,O=Acme`), else
/// its first `URI` (a SPIFFE id under Istio, whose workload certificates have no subject).
/// `None` when that element is malformed or names nobody: an earlier element never stands in.
pub fn identity(header: &str) -> Option<String> {
    let pairs = parse_element(last_element(header))?;
    let mut subjects = values_of(&pairs, "Subject");
    let subject = subjects.next();
    if subjects.next().is_some() {
        return None; // one certificate has one subject: two are a forgery or a bug
    }
    subject
        .filter(|subject| !subject.is_empty())
        .or_else(|| values_of(&pairs, "URI").next().filter(|uri| !uri.is_empty()))
        .cloned()
}

/// The values of every `key` pair (keys are case-insensitive).
fn values_of<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a String> {
    pairs.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, value)| value)
}

/// The text after the last comma that is outside quotes.
fn last_element(header: &str) -> &str {
    let bytes = header.as_bytes();
    let mut quoted = false;
    for index in (0..bytes.len()).rev() {
        match bytes[index] {
            b'"' if !is_escaped(bytes, index) => quoted = !quoted,
            b',' if !quoted => return &header[index + 1..],
            _ => {}
        }
    }
    header
}

/// Whether the byte at `index` follows an odd number of backslashes.
fn is_escaped(bytes: &[u8], index: usize) -> bool {
    bytes[..index].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The `(key, value)` pairs of one element, values unquoted; `None` if it is malformed.
fn parse_element(element: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = element.trim();
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.contains([';', ',', '"']) {
            return None;
        }
        let (value, after_value) = match after_key.strip_prefix('"') {
            Some(quoted) => quoted_value(quoted)?,
            None => {
                let end = after_key.find(';').unwrap_or(after_key.len());
                let value = &after_key[..end];
                if value.contains(['"', ',']) {
                    return None;
                }
                (value.trim().to_owned(), &after_key[end..])
            }
        };
        pairs.push((key.to_owned(), value));
        let after_value = after_value.trim_start();
        rest = match after_value.strip_prefix(';') {
            Some(next) => next.trim_start(),
            None if after_value.is_empty() => after_value,
            None => return None,
        };
    }
    Some(pairs)
}

/// A quoted value (after its opening quote) up to its closing quote, with `\"` unescaped, and
/// the text after the closing quote.
fn quoted_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[index + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return None,
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The element a sidecar appends for the certificate of `CN=batch,O=Acme`.
    const SIDECAR: &str = r#"By=spiffe://cluster.local/ns/exports/sa/stream-export;Hash=1f2e;Subject="CN=batch,O=Acme";URI=spiffe://cluster.local/ns/jobs/sa/batch"#;

    #[test]
    fn a_single_element_names_its_subject() {
        assert_eq!(identity(SIDECAR).as_deref(), Some("CN=batch,O=Acme"));
    }

    #[test]
    fn only_the_last_element_counts_however_many_come_before() {
        for forged in [
            r#"Subject="CN=admin";URI=spiffe://cluster.local/ns/ops/sa/admin"#,
            r#"By=x;Subject="CN=admin",By=y;Subject="CN=root""#,
            "URI=spiffe://cluster.local/ns/ops/sa/admin",
        ] {
            let header = format!("{forged},{SIDECAR}");
            assert_eq!(identity(&header).as_deref(), Some("CN=batch,O=Acme"), "{header}");
        }
    }

    #[test]
    fn a_forged_unbalanced_quote_cannot_swallow_the_sidecar_element() {
        for forged in [r#"Subject="CN=admin"#, r#"Subject="CN=admin\"#, r#"Subject=\""#, "\""] {
            let header = format!("{forged},{SIDECAR}");
            assert_eq!(identity(&header).as_deref(), Some("CN=batch,O=Acme"), "{header}");
        }
    }

    #[test]
    fn quoted_values_keep_commas_semicolons_equals_and_escaped_quotes() {
        let header = r#"Hash=a;Subject="CN=Acme\, Inc.;x=1,O=\"Quoted\" Org";URI=spiffe://a/b"#;
        assert_eq!(identity(header).as_deref(), Some(r#"CN=Acme\, Inc.;x=1,O="Quoted" Org"#));
        let after_forged = format!(r#"Subject="CN=admin",{header}"#);
        assert_eq!(identity(&after_forged).as_deref(), Some(r#"CN=Acme\, Inc.;x=1,O="Quoted" Org"#));
    }

    #[test]
    fn the_spiffe_uri_names_a_caller_without_a_subject() {
        let istio = r#"By=spiffe://cluster.local/ns/exports/sa/stream-export;Hash=b;Subject="";URI=spiffe://cluster.local/ns/jobs/sa/batch"#;
        assert_eq!(identity(istio).as_deref(), Some("spiffe://cluster.local/ns/jobs/sa/batch"));
        let no_subject = "Hash=b;DNS=batch.jobs.svc;URI=spiffe://cluster.local/ns/jobs/sa/batch;DNS=other";
        assert_eq!(identity(no_subject).as_deref(), Some("spiffe://cluster.local/ns/jobs/sa/batch"));
        // Both present: the subject, as for an mTLS peer.
        assert_eq!(identity(SIDECAR).as_deref(), Some("CN=batch,O=Acme"));
    }

    #[test]
    fn keys_are_case_insensitive_and_spaces_around_pairs_are_ignored() {
        assert_eq!(identity(r#" hash=a ; subject="CN=x" ; uri=spiffe://a "#).as_deref(), Some("CN=x"));
    }

    #[test]
    fn a_last_element_that_names_nobody_or_is_malformed_gives_no_identity() {
        for header in [
            "",
            "Hash=b",
            r#"Hash=b;Subject="";URI="#,
            // Nothing after the last comma: the element before is never used instead.
            &format!("{SIDECAR},"),
            &format!("{SIDECAR}, "),
            r#"Hash=b;Subject="CN=unterminated"#,
            r#"Hash=b;Subject="CN=a"junk;URI=spiffe://a"#,
            r#"Hash=b;Subject=CN"x;URI=spiffe://a"#,
            "Hash=b;Subject",
            "=x;Subject=CN=a",
            r#"Subject="CN=a";Subject="CN=b""#,
        ] {
            assert_eq!(identity(header), None, "{header:?}");
        }
    }

    #[test]
    fn unquoted_values_are_taken_up_to_the_next_semicolon() {
        assert_eq!(
            identity("Hash=b;URI=spiffe://cluster.local/ns/a/sa/b;DNS=x").as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
    }
}
