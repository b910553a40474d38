//! Where an archive may go: an `archive_uri` parsed, normalised and held against the operator's
//! allow-list (`--archive-allow`) before anything runs, and checked again, for `file://`, before
//! every write (a symlink made after the job was created does not lead out of the root either).

use std::path::{Path, PathBuf};

use url::Url;

/// The archive URI schemes, each an `object_store` backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `s3://bucket/prefix`: Amazon S3 or an S3-compatible store (`AWS_ENDPOINT_URL`).
    S3,
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs,
    /// `az://container/prefix`: Azure Blob Storage.
    Azure,
    /// `file:///path`: the service's local filesystem.
    File,
}

impl Scheme {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "s3" => Some(Self::S3),
            "gs" => Some(Self::Gcs),
            "az" => Some(Self::Azure),
            "file" => Some(Self::File),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::Gcs => "gs",
            Self::Azure => "az",
            Self::File => "file",
        }
    }
}

/// An archive location in its one normal spelling: a scheme, a bucket (empty for `file://`) and
/// the prefix's segments, none empty, `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Which store.
    pub scheme: Scheme,
    /// The bucket or container (empty for `file://`).
    pub bucket: String,
    /// The prefix, segment by segment.
    pub segments: Vec<String>,
}

impl Location {
    /// Parses and normalises `uri`; the error says what is wrong with it, for a caller.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let url = Url::parse(uri).map_err(|error| format!("is not a URI ({error})"))?;
        let scheme = Scheme::parse(url.scheme())
            .ok_or_else(|| format!("has the scheme `{}`; use s3://, gs://, az:// or file://", url.scheme()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("carries credentials; the service uses its own".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("has a query or a fragment".to_owned());
        }
        if url.port().is_some() {
            return Err("has a port".to_owned());
        }
        let bucket = url.host_str().unwrap_or_default().to_owned();
        match scheme {
            Scheme::File if !bucket.is_empty() && bucket != "localhost" => {
                return Err("names a host; a file:// URI is a local path (file:///path)".to_owned());
            }
            Scheme::File => {}
            _ if bucket.is_empty() => return Err("names no bucket".to_owned()),
            _ => {}
        }
        let bucket = if scheme == Scheme::File { String::new() } else { bucket };
        // `Url` resolves `..` for file:// itself; the raw text is checked too, so that a path
        // that says `..` is refused rather than quietly resolved.
        let raw_path = uri.split_once("://").map_or("", |(_, rest)| rest);
        let raw_path = raw_path.find('/').map_or("", |at| &raw_path[at..]);
        let mut segments = Vec::new();
        for raw in raw_path.split('/').filter(|segment| !segment.is_empty()) {
            let segment = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| "has a path that is not UTF-8".to_owned())?;
            if segment == "." || segment == ".." {
                return Err("has `.` or `..` in its path".to_owned());
            }
            if segment.contains(['/', '\\', '\0']) || segment.chars().any(char::is_control) {
                return Err(format!("has the path segment {segment:?}, which no store accepts"));
            }
            segments.push(segment.into_owned());
        }
        if scheme == Scheme::File && segments.is_empty() {
            return Err("is the filesystem's root".to_owned());
        }
        Ok(Self { scheme, bucket, segments })
    }

    /// Whether `self` is `other` or lies under it, segment by segment (`s3://b/teams` does not
    /// hold `s3://b/teams-x`).
    pub fn is_under(&self, other: &Self) -> bool {
        self.scheme == other.scheme && self.bucket == other.bucket && self.segments.starts_with(&other.segments)
    }

    /// The prefix as an object key (`a/b`), or the local path without its leading `/`.
    pub fn key_prefix(&self) -> String {
        self.segments.join("/")
    }

    /// The location below this one: `segment` appended.
    pub fn join(&self, segment: &str) -> Self {
        let mut joined = self.clone();
        joined.segments.push(segment.to_owned());
        joined
    }

    /// The local path of a `file://` location.
    pub fn local_path(&self) -> PathBuf {
        let mut path = PathBuf::from("/");
        path.extend(&self.segments);
        path
    }

    /// The URI of `key` in this location's bucket.
    pub fn uri_of(&self, key: &str) -> String {
        format!("{}://{}/{key}", self.scheme.name(), self.bucket)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri_of(&self.key_prefix()))
    }
}

/// Why an `archive_uri` may not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `--archive-allow`: archiving is off.
    NotConfigured,
    /// The URI is malformed; the words say how.
    Invalid(String),
    /// Not under any allowed prefix (or, for `file://`, its real path leaves the prefix's).
    NotAllowed,
}

/// The operator's `--archive-allow` prefixes.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    prefixes: Vec<Location>,
}

impl AllowList {
    /// The list of `prefixes`; the error names the first one that is not an archive URI.
    pub fn new(prefixes: &[String]) -> Result<Self, String> {
        let prefixes = prefixes
            .iter()
            .map(|prefix| Location::parse(prefix).map_err(|why| format!("--archive-allow {prefix:?} {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { prefixes })
    }

    /// Whether any prefix is allowed.
    pub fn is_configured(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// `uri` normalised, if it lies under an allowed prefix (for `file://`, also after every
    /// symlink of its existing part is resolved).
    pub fn check(&self, uri: &str) -> Result<Location, Refusal> {
        if !self.is_configured() {
            return Err(Refusal::NotConfigured);
        }
        let location = Location::parse(uri).map_err(Refusal::Invalid)?;
        self.check_location(&location)?;
        Ok(location)
    }

    /// [`AllowList::check`] of a parsed location (again before each write).
    pub fn check_location(&self, location: &Location) -> Result<(), Refusal> {
        let allowed = self.prefixes.iter().find(|prefix| location.is_under(prefix)).ok_or(Refusal::NotAllowed)?;
        if location.scheme == Scheme::File {
            let root = real_path(&allowed.local_path());
            if !real_path(&location.local_path()).starts_with(root) {
                return Err(Refusal::NotAllowed);
            }
        }
        Ok(())
    }
}

/// `path` with every symlink of its longest existing ancestor resolved (the rest appended as
/// written: it holds no `..`, [`Location::parse`] refused those).
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |path, part| path.join(part));
        }
        match (existing.file_name().map(ToOwned::to_owned), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(prefixes: &[&str]) -> AllowList {
        AllowList::new(&prefixes.iter().map(|prefix| (*prefix).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn uris_are_normalised() {
        let location = Location::parse("s3://exports/teams//analytics/").unwrap();
        assert_eq!(location.to_string(), "s3://exports/teams/analytics");
        assert_eq!(Location::parse("file:///var/lib/exports").unwrap().to_string(), "file:///var/lib/exports");
        assert_eq!(Location::parse("gs://b/a%20b").unwrap().segments, ["a b"]);
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        for (uri, why) in [
            ("http://exports/x", "scheme"),
            ("s3:///x", "bucket"),
            ("s3://key:secret@exports/x", "credentials"),
            ("s3://exports/x?versionId=1", "query"),
            ("s3://exports/teams/../other", ".."),
            ("s3://exports/teams/%2e%2e/other", ".."),
            ("file://host/x", "host"),
            ("file:///", "root"),
            ("exports/x", "not a URI"),
        ] {
            let error = Location::parse(uri).unwrap_err();
            assert!(error.contains(why), "{uri}: {error}");
        }
    }

    #[test]
    fn only_locations_under_an_allowed_prefix_pass() {
        let list = allow(&["s3://exports/teams/analytics", "gs://archive/"]);
        assert!(list.check("s3://exports/teams/analytics/daily").is_ok());
        assert!(list.check("s3://exports/teams/analytics").is_ok());
        assert!(list.check("gs://archive/anything").is_ok());
        assert_eq!(list.check("s3://exports/teams/analytics-x"), Err(Refusal::NotAllowed));
        assert_eq!(list.check("s3://exports/teams"), Err(Refusal::NotAllowed));
        assert_eq!(list.check("s3://other/teams/analytics"), Err(Refusal::NotAllowed));
        assert_eq!(list.check("gs://archive-2/x"), Err(Refusal::NotAllowed));
        assert!(matches!(list.check("s3://exports/teams/analytics/../x"), Err(Refusal::Invalid(_))));
        assert_eq!(AllowList::default().check("s3://exports/x"), Err(Refusal::NotConfigured));
    }

    #[test]
    fn a_symlink_does_not_lead_out_of_a_file_root() {
        let base = std::env::temp_dir().join(format!("archive-allow-{}", uuid::Uuid::new_v4()));
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let list = allow(&[&format!("file://{}", root.display())]);
        assert!(list.check(&format!("file://{}/team/daily", root.display())).is_ok());
        assert_eq!(list.check(&format!("file://{}/escape/daily", root.display())), Err(Refusal::NotAllowed));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
