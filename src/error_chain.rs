//! An error and its causes in one line, for messages: reqwest's and tonic's own messages say
//! little ("error sending request", "transport error"); the cause ("connection refused") is in
//! the chain. The one printer of the crate, used by the upstream client and the CLI.

/// The error and its sources, joined with ": ", leaving out a cause whose text the line
/// already holds (some errors repeat their source's message).
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn causes_follow_the_error_once_each() {
        let inner = Layer("connection refused", None);
        let repeating = Layer("tcp connect error: connection refused", Some(Box::new(inner)));
        let outer = Layer("error sending request", Some(Box::new(repeating)));
        assert_eq!(one_line(&outer), "error sending request: tcp connect error: connection refused");
    }
}
