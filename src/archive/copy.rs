//! One task's file copied into the archive: a fresh download URL read from the task's status
//! (Stream signs a new one at each read, for 60 days), the body streamed through SHA-256 into a
//! multipart upload of bounded parts, the upload aborted when anything fails (no partial object
//! under the final key), and the whole copy retried with backoff.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart, path::Path};
use sha2::{Digest, Sha256};

use super::{Archives, CopyError, destination::Location};
use crate::{
    proto::ArchivedFile,
    telemetry::metrics,
    upstream::{ErrorKind, UpstreamError},
};

/// Bytes per uploaded part: S3's smallest part, so that memory stays small.
const PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts uploading at once, per copy.
const PARTS_IN_FLIGHT: usize = 3;

/// Tries of one copy, and the first wait between them (it doubles).
const COPY_TRIES: usize = 6;
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// A copy made: the file as archived, and when Stream created the task.
#[derive(Clone, Debug)]
pub struct Copied {
    /// The object's key, size and SHA-256.
    pub file: ArchivedFile,
    /// The task's creation time, as Stream gave it.
    pub task_created: Option<chrono::DateTime<chrono::Utc>>,
}

impl Archives {
    /// Copies task `task_id`'s file to `key` under `location`, re-reading it when `verify`;
    /// retried with backoff while the failure may pass.
    pub async fn copy(&self, location: &Location, key: &str, task_id: &str, verify: bool) -> Result<Copied, CopyError> {
        let _slot = self.copies.acquire().await.map_err(|_| CopyError::Store("the service is stopping".into()))?;
        (|| self.copy_once(location, key, task_id, verify))
            .retry(ExponentialBuilder::default().with_min_delay(FIRST_RETRY).with_max_times(COPY_TRIES - 1))
            .when(CopyError::is_temporary)
            .notify(|error, wait| tracing::info!(%error, ?wait, key, "an archive copy failed; it is tried again"))
            .await
    }

    async fn copy_once(
        &self,
        location: &Location,
        key: &str,
        task_id: &str,
        verify: bool,
    ) -> Result<Copied, CopyError> {
        let copied = self.try_copy(location, key, task_id, verify).await;
        metrics::archive_copy(copied.as_ref().ok().map(|copied| copied.file.bytes));
        copied
    }

    async fn try_copy(&self, location: &Location, key: &str, task_id: &str, verify: bool) -> Result<Copied, CopyError> {
        let store = self.store_for(location, key)?;
        let status = self.client.get_task(task_id, None).await.map_err(|error| match error.kind() {
            ErrorKind::NotFound => CopyError::Gone(format!("Stream no longer knows the task {task_id}")),
            _ => CopyError::Upstream(error),
        })?;
        let task_created = status.body.created_at;
        let url = status.body.result.and_then(|result| result.url).filter(|url| !url.is_empty());
        let url = url.ok_or_else(|| CopyError::Gone(format!("the task {task_id} has no file (any more)")))?;
        let response = self.client.download(&url).await.map_err(download_refused)?;
        let path = Path::from(key);
        let (bytes, sha256) = upload(store.as_ref(), &path, response.bytes_stream()).await?;
        if verify {
            let (read_bytes, read_sha256) = self.hash_object(store.as_ref(), &path).await?;
            if (read_bytes, &read_sha256) != (bytes, &sha256) {
                return Err(CopyError::Mismatch { key: key.to_owned() });
            }
        }
        Ok(Copied { file: ArchivedFile { key: key.to_owned(), bytes, sha256 }, task_created })
    }
}

/// Streams `body` into a multipart upload of `path`, hashing it; its size and SHA-256 (hex).
/// Any failure aborts the upload.
pub(super) async fn upload<S>(store: &dyn ObjectStore, path: &Path, body: S) -> Result<(u64, String), CopyError>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    let upload = store.put_multipart(path).await.map_err(CopyError::store)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut body = body;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let failed = loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    break CopyError::store(error);
                }
                hasher.update(&chunk);
                bytes += chunk.len() as u64;
                writer.put(chunk);
            }
            Some(Err(error)) => break CopyError::Download(error.without_url().to_string()),
            None => {
                writer.finish().await.map_err(CopyError::store)?;
                return Ok((bytes, hex::encode(hasher.finalize())));
            }
        }
    };
    if let Err(error) = writer.abort().await {
        tracing::warn!(%error, "an archive upload could not be aborted; the store's cleanup of incomplete uploads removes it");
    }
    Err(failed)
}

/// A download that did not start: a refused or expired URL (403) is read again from the task's
/// status at the next try; a file Stream no longer has (404) is gone.
fn download_refused(error: UpstreamError) -> CopyError {
    match error.kind() {
        ErrorKind::NotFound => CopyError::Gone("Stream no longer has the task's file".to_owned()),
        ErrorKind::Permanent if matches!(error, UpstreamError::Api { status: 403, .. }) => {
            CopyError::Download("the download URL was refused (expired?)".to_owned())
        }
        _ => CopyError::Upstream(error),
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use object_store::{ObjectStoreExt, memory::InMemory};

    use super::*;

    fn chunks(parts: &[&[u8]]) -> Vec<Result<Bytes, reqwest::Error>> {
        parts.iter().map(|part| Ok(Bytes::copy_from_slice(part))).collect()
    }

    #[tokio::test]
    async fn a_file_is_streamed_into_parts_with_its_size_and_sha256() {
        let store = InMemory::new();
        let path = Path::from("team/job/00000-task.jsonl");
        // Larger than one part, in small chunks as a download gives them.
        let file: Vec<u8> = (0..PART_BYTES * 2 + 123).map(|n| (n % 251) as u8).collect();
        let pieces: Vec<&[u8]> = file.chunks(16 * 1024).collect();
        let (bytes, sha256) = upload(&store, &path, stream::iter(chunks(&pieces))).await.unwrap();
        assert_eq!((bytes, sha256), (file.len() as u64, hex::encode(Sha256::digest(&file))));
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.as_ref(), file.as_slice());
    }

    #[tokio::test]
    async fn a_download_that_breaks_leaves_no_object() {
        let store = InMemory::new();
        let path = Path::from("team/job/00000-task.jsonl");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let broken = reqwest::Client::new().get("http://[::1]:1/").send().await.unwrap_err();
        let mut body = chunks(&[&[1u8; 1024][..]]);
        body.push(Err(broken));
        let failed = upload(&store, &path, stream::iter(body)).await.unwrap_err();
        assert!(matches!(failed, CopyError::Download(_)), "{failed:?}");
        assert!(matches!(store.head(&path).await, Err(object_store::Error::NotFound { .. })));
    }
}
