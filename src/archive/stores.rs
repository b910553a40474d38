//! The object stores behind archive locations: one client per bucket (or one for the local
//! filesystem), built with the service's own credentials, from the cloud's standard
//! environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), never from a request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use object_store::{
    BackoffConfig, ObjectStore, RetryConfig, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, local::LocalFileSystem,
};

use super::destination::{Location, Scheme};

/// The options of the object store clients: the process's `AWS_*`, `GOOGLE_*` and `AZURE_*`
/// variables, lower-cased as `object_store` names its keys. Never printed: they hold secrets.
#[derive(Clone, Default)]
pub struct StoreOptions(Vec<(String, String)>);

impl StoreOptions {
    /// The options that this process's environment gives.
    pub fn from_env() -> Self {
        Self::new(std::env::vars())
    }

    /// The options among `variables` (name, value): those of the three clouds.
    pub fn new(variables: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            variables
                .into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .filter(|(name, _)| ["aws_", "google_", "azure_"].iter().any(|cloud| name.starts_with(cloud)))
                .collect(),
        )
    }

    fn for_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter(move |(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

/// A client's own retries of a failed request (5xx, a broken connection), short: the copy
/// retries as a whole above them.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), ..BackoffConfig::default() },
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
    }
}

/// The clients, one per bucket, built on first use.
#[derive(Debug, Default)]
pub struct Stores {
    options: StoreOptions,
    built: Mutex<HashMap<(Scheme, String), Arc<dyn ObjectStore>>>,
}

impl Stores {
    /// Clients built with `options`.
    pub fn new(options: StoreOptions) -> Self {
        Self { options, built: Mutex::default() }
    }

    /// The client of `location`'s bucket.
    pub fn of(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let key = (location.scheme, location.bucket.clone());
        let mut built = self.built.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = built.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = self.build(location)?;
        built.insert(key, Arc::clone(&store));
        Ok(store)
    }

    fn build(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let bucket = location.bucket.as_str();
        Ok(match location.scheme {
            Scheme::S3 => {
                let builder = AmazonS3Builder::new().with_bucket_name(bucket).with_retry(retry());
                Arc::new(configured(builder, self.options.for_prefix("aws_"), AmazonS3Builder::with_config).build()?)
            }
            Scheme::Gcs => {
                let builder = GoogleCloudStorageBuilder::new().with_bucket_name(bucket).with_retry(retry());
                let options = self.options.for_prefix("google_");
                Arc::new(configured(builder, options, GoogleCloudStorageBuilder::with_config).build()?)
            }
            Scheme::Azure => {
                let builder = MicrosoftAzureBuilder::new().with_container_name(bucket).with_retry(retry());
                let options = self.options.for_prefix("azure_");
                Arc::new(configured(builder, options, MicrosoftAzureBuilder::with_config).build()?)
            }
            // An upload is staged beside its final name and renamed into it when complete.
            Scheme::File => Arc::new(LocalFileSystem::new()),
        })
    }
}

/// `builder` with every option whose name is one of its configuration keys (others are left
/// out: an `AWS_PROFILE`, say, is not an `object_store` key).
fn configured<'a, B, K: std::str::FromStr>(
    builder: B,
    options: impl Iterator<Item = (&'a str, &'a str)>,
    set: fn(B, K, &'a str) -> B,
) -> B {
    options.fold(builder, |builder, (name, value)| match name.parse() {
        Ok(key) => set(builder, key, value),
        Err(_) => builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cloud_variables_are_kept_and_never_printed() {
        let options = StoreOptions::new([
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "hunter2".to_owned()),
            ("STREAM_API_SECRET".to_owned(), "other".to_owned()),
            ("AZURE_STORAGE_ACCOUNT_NAME".to_owned(), "acct".to_owned()),
        ]);
        let printed = format!("{options:?}");
        assert_eq!(printed, r#"["aws_secret_access_key", "azure_storage_account_name"]"#);
        assert!(!printed.contains("hunter2"));
    }
}
