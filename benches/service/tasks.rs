//! Export tasks for the figures, created through the service as a client would create them.

use futures::{StreamExt, stream};
use stream_export::{
    emulator::data::KNOWN_CHANNEL,
    proto::{ChannelRef, ExportChannelsRequest, export_service_client::ExportServiceClient},
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
