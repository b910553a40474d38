//! Export tasks for the figures, created through the service as a client would create them.

use futures::{StreamExt, stream};
use stream_export::{
    emulator::data::KNOWN_CHANNEL,
    proto::{ChannelRef, ExportChannelsRequest, ExportFormatVersion, export_service_client::ExportServiceClient},
};
use tonic::transport::Channel;

/// Submits `count` channel exports (16 at a time) and returns their task ids. The emulator
/// keeps new tasks `waiting` for an hour, so they change only when the bench steers them.
pub async fn create(client: &ExportServiceClient<Channel>, count: usize) -> Vec<String> {
    let (kind, id) = KNOWN_CHANNEL.split_once(':').expect("KNOWN_CHANNEL is type:id");
    stream::iter(0..count)
        .map(|_| {
            let mut client = client.clone();
            let channel = ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() };
            async move {
                let request = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
                client.export_channels(request).await.expect("ExportChannels succeeds").into_inner().task_id
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// Submits one export of `channel` (`type:id`), in format v2, as the caller of `authorization`
/// (`Bearer <token>`), and returns its task id: a task the service records as that caller's.
pub async fn create_as(client: &ExportServiceClient<Channel>, authorization: &str, channel: &str) -> String {
    let (kind, id) = channel.split_once(':').expect("a channel is type:id");
    let channel = ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() };
    let mut request = tonic::Request::new(ExportChannelsRequest {
        channels: vec![channel],
        version: ExportFormatVersion::V2 as i32,
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", authorization.parse().expect("an ASCII header value"));
    client.clone().export_channels(request).await.expect("ExportChannels succeeds").into_inner().task_id
}
