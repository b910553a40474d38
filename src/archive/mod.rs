//! Archives: an export job's files copied into the team's own bucket (S3, GCS, Azure Blob, or
//! a local directory, through `object_store`), each checksummed, with a manifest written last.
//!
//! - [`destination`]: an `archive_uri` normalised and held against `--archive-allow`;
//! - [`stores`]: the object store clients, with the service's own credentials;
//! - [`copy`]: one task's file downloaded and streamed into a multipart upload;
//! - [`manifest`]: what a job archived, and `SHA256SUMS`.
//!
//! Here too are the reads of an archive: the objects of a manifest checked again
//! ([`Archives::verify`]), and an archived file read back for `ReadExport` once Stream has
//! deleted its own ([`Archives::open`]).

pub mod copy;
pub mod destination;
pub mod manifest;
pub mod stores;

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, path::Path};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use self::{
    copy::Copied,
    destination::{AllowList, Location, Refusal},
    manifest::Manifest,
    stores::StoreOptions,
};
use crate::{
    proto::{ArchiveMismatch, VerifyExportJobResponse, archive_mismatch::Problem},
    upstream::{StreamClient, UpstreamError},
};

/// Where jobs may archive, and with which credentials.
#[derive(Clone, Debug, Default)]
pub struct ArchiveSettings {
    /// The `--archive-allow` prefixes; none: archiving is off.
    pub allow: Vec<String>,
    /// The store clients' options (the process's cloud variables).
    pub store_options: StoreOptions,
}

/// Retries of a manifest's write, and the first wait between them (it doubles).
const MANIFEST_RETRIES: usize = 5;
const MANIFEST_FIRST_RETRY: Duration = Duration::from_millis(500);

/// Archive copies running at once in this replica, all jobs together: each holds a few parts
/// in memory.
const COPIES_AT_ONCE: usize = 4;

/// Why an archive operation failed. The words never hold a credential or a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Stream no longer has the task, or its file (deleted, past 60 days).
    #[error("{0}")]
    Gone(String),
    /// The location is no longer allowed (a `file://` symlink leading out of its root).
    #[error("the archive location is not under an allowed prefix (a symlink leads out of it?)")]
    NotAllowed,
    /// The download broke.
    #[error("the download of the task's file failed: {0}")]
    Download(String),
    /// Stream failed.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The object store failed.
    #[error("the archive store failed: {0}")]
    Store(String),
    /// The object read back differs from what was uploaded.
    #[error("the archived object {key} reads back with another size or SHA-256")]
    Mismatch {
        /// The object's key.
        key: String,
    },
    /// A manifest of other files is already at the job's manifest key.
    #[error("another manifest is already at {key}; it was left as it is")]
    ManifestExists {
        /// The manifest's key.
        key: String,
    },
}

impl CopyError {
    fn store(error: object_store::Error) -> Self {
        Self::Store(without_queries(&error.to_string()))
    }

    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Gone(_) | Self::NotAllowed | Self::ManifestExists { .. } => false,
            Self::Download(_) | Self::Store(_) | Self::Mismatch { .. } => true,
            Self::Upstream(error) => error.kind().is_temporary(),
        }
    }
}

/// `text` with the query of every URL in it cut: a store's error names the request it made,
/// and a URL's query may hold a signature (an Azure SAS token, a presigned request).
fn without_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_url = false;
    let mut in_query = false;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            in_url = false;
            in_query = false;
        } else if !in_url && (text[at..].starts_with("http://") || text[at..].starts_with("https://")) {
            in_url = true;
        } else if in_url && c == '?' && !in_query {
            in_query = true;
            out.push_str("?…");
        }
        if !in_query {
            out.push(c);
        }
    }
    out
}

/// The archives of this replica: the allow-list, the store clients, and the copies' slots.
#[derive(Debug)]
pub struct Archives {
    allow: AllowList,
    stores: stores::Stores,
    client: StreamClient,
    copies: Semaphore,
}

impl Archives {
    /// Archives to the prefixes `allow`, with the store clients' `options`, downloading through
    /// `client`.
    pub fn new(allow: AllowList, options: StoreOptions, client: StreamClient) -> Arc<Self> {
        // object_store's HTTP clients use the process's default rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(Self { allow, stores: stores::Stores::new(options), client, copies: Semaphore::new(COPIES_AT_ONCE) })
    }

    /// `uri` normalised, if the allow-list lets a job write there.
    pub fn check(&self, uri: &str) -> Result<Location, Refusal> {
        self.allow.check(uri)
    }

    /// The folder of job `job_id` under `location`.
    pub fn job_folder(location: &Location, job_id: &str) -> Location {
        location.join(job_id)
    }

    /// The key of shard `shard`'s file (task `task_id`): `PREFIX/JOB_ID/SHARD-TASK_ID.json`,
    /// `.jsonl` when `lines` (v2 and user exports).
    pub fn file_key(location: &Location, job_id: &str, shard: u32, task_id: &str, lines: bool) -> String {
        let extension = if lines { "jsonl" } else { "json" };
        Self::job_folder(location, job_id).join(&format!("{shard:05}-{task_id}.{extension}")).key_prefix()
    }

    /// The URI of job `job_id`'s manifest.
    pub fn manifest_uri(location: &Location, job_id: &str) -> String {
        Self::job_folder(location, job_id).join(manifest::MANIFEST).to_string()
    }

    /// The store of `location`, for the object `key`, checked against the allow-list again.
    fn store_for(&self, location: &Location, key: &str) -> Result<Arc<dyn ObjectStore>, CopyError> {
        let object = Location {
            scheme: location.scheme,
            bucket: location.bucket.clone(),
            segments: key.split('/').map(str::to_owned).collect(),
        };
        self.allow.check_location(&object).map_err(|_| CopyError::NotAllowed)?;
        self.stores.of(location).map_err(CopyError::store)
    }

    /// The size and SHA-256 of the object at `path`.
    async fn hash_object(&self, store: &dyn ObjectStore, path: &Path) -> Result<(u64, String), CopyError> {
        let mut body = store.get(path).await.map_err(CopyError::store)?.into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(CopyError::store)?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        Ok((bytes, hex::encode(hasher.finalize())))
    }

    /// Writes `manifest` for job `job_id` under `location`: `SHA256SUMS`, then the manifest,
    /// create-only. A manifest already there for the same files (an earlier try of this job)
    /// counts as written; any other is left alone and refused.
    pub async fn write_manifest(
        &self,
        location: &Location,
        job_id: &str,
        manifest: &Manifest,
    ) -> Result<(), CopyError> {
        let folder = Self::job_folder(location, job_id);
        let key = folder.join(manifest::MANIFEST).key_prefix();
        let store = self.store_for(location, &key)?;
        let sums = Path::from(folder.join(manifest::SHA256SUMS).key_prefix());
        let body = serde_json::to_vec_pretty(manifest).map_err(|error| CopyError::Store(error.to_string()))?;
        let write = || async {
            store.put(&sums, PutPayload::from(manifest.sha256sums())).await.map_err(CopyError::store)?;
            let created =
                store.put_opts(&Path::from(key.as_str()), PutPayload::from(body.clone()), PutMode::Create.into()).await;
            match created {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    // Ours, from an earlier try whose answer was lost, or another writer's.
                    let existing = match store.get(&Path::from(key.as_str())).await {
                        Ok(found) => found.bytes().await.map_err(CopyError::store)?,
                        Err(error) => return Err(CopyError::store(error)),
                    };
                    match serde_json::from_slice::<Manifest>(&existing) {
                        Ok(existing) if existing.same_files(manifest) => Ok(()),
                        _ => Err(CopyError::ManifestExists { key: key.clone() }),
                    }
                }
                Err(error) => Err(CopyError::store(error)),
            }
        };
        write
            .retry(ExponentialBuilder::default().with_min_delay(MANIFEST_FIRST_RETRY).with_max_times(MANIFEST_RETRIES))
            .when(CopyError::is_temporary)
            .await
    }

    async fn read_manifest_at(&self, store: &dyn ObjectStore, key: &str) -> Result<Option<Manifest>, CopyError> {
        let body = match store.get(&Path::from(key)).await {
            Ok(found) => found.bytes().await.map_err(CopyError::store)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(CopyError::store(error)),
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|error| CopyError::Store(format!("the manifest at {key} does not parse: {error}")))
    }

    /// Reads job `job_id`'s manifest under `location` and every object it lists, and says which
    /// is missing or differs. `None` when there is no manifest.
    pub async fn verify(
        &self,
        location: &Location,
        job_id: &str,
    ) -> Result<Option<VerifyExportJobResponse>, CopyError> {
        let key = Self::job_folder(location, job_id).join(manifest::MANIFEST).key_prefix();
        let store = self.store_for(location, &key)?;
        let Some(manifest) = self.read_manifest_at(store.as_ref(), &key).await? else { return Ok(None) };
        let mut response =
            VerifyExportJobResponse { manifest_uri: location.uri_of(&key), ..VerifyExportJobResponse::default() };
        for file in &manifest.files {
            let store = self.store_for(location, &file.key)?;
            let (bytes, sha256) = match self.hash_object(store.as_ref(), &Path::from(file.key.as_str())).await {
                Ok(read) => read,
                Err(CopyError::Store(_)) if !self.exists(store.as_ref(), &file.key).await? => (0, String::new()),
                Err(error) => return Err(error),
            };
            response.objects_checked += 1;
            response.bytes_checked += bytes;
            let problem = if sha256.is_empty() {
                Problem::Missing
            } else if bytes != file.bytes {
                Problem::Size
            } else if sha256 != file.sha256 {
                Problem::Sha256
            } else {
                continue;
            };
            response.mismatches.push(ArchiveMismatch {
                key: file.key.clone(),
                problem: problem as i32,
                expected_bytes: file.bytes,
                actual_bytes: bytes,
                expected_sha256: file.sha256.clone(),
                actual_sha256: sha256,
            });
        }
        Ok(Some(response))
    }

    async fn exists(&self, store: &dyn ObjectStore, key: &str) -> Result<bool, CopyError> {
        match store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(CopyError::store(error)),
        }
    }

    /// The archived object `key` under `location`, as a byte stream (`ReadExport` of a task
    /// whose Stream file is gone). `None` when there is no such object.
    pub async fn open(
        &self,
        location: &Location,
        key: &str,
    ) -> Result<Option<impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static>, CopyError> {
        let store = self.store_for(location, key)?;
        match store.get(&Path::from(key)).await {
            Ok(found) => Ok(Some(found.into_stream().map_err(std::io::Error::other))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(CopyError::store(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_never_carries_a_url_query() {
        let text = "Error performing PUT https://acct.blob.core.windows.net/c/k?sv=2024&sig=SECRET in 2ms - 403";
        assert_eq!(without_queries(text), "Error performing PUT https://acct.blob.core.windows.net/c/k?… in 2ms - 403");
        assert_eq!(without_queries("no url? here"), "no url? here");
    }
}
