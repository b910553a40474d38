//! A job's plan: its selector resolved into a frozen, deduplicated list of channels (listed by
//! a channel query) or users, cut into shards of at most the shard size, each an ordinary
//! `ExportChannels` or `ExportUsers` request.

use std::collections::HashSet;

use serde_json::Value;
use tonic::Status;

use super::JobSettings;
use crate::{
    contract::{json, status},
    proto::{
        ChannelRef, CreateExportJobRequest, ExportChannelsRequest, ExportJobTask, ExportUsersRequest,
        create_export_job_request::Selector,
    },
    store::jobs::ShardRecord,
    upstream::{StreamClient, channel_list::ChannelLister},
};

/// One shard's request, as `ExportChannels` or `ExportUsers` would take it.
#[derive(Clone, Debug)]
pub enum ShardRequest {
    /// Up to the shard size of channels, with their windows.
    Channels(ExportChannelsRequest),
    /// Up to the shard size of users.
    Users(ExportUsersRequest),
}

impl ShardRequest {
    /// The request of shard `task` of a job created with `request`.
    pub fn of(request: &CreateExportJobRequest, task: &ExportJobTask) -> Self {
        if task.user_ids.is_empty() {
            Self::Channels(ExportChannelsRequest {
                channels: task.channels.clone(),
                include_truncated_messages: request.include_truncated_messages,
                include_soft_deleted_channels: request.include_soft_deleted_channels,
                clear_deleted_message_text: request.clear_deleted_message_text,
                export_users: request.export_users,
                version: request.version,
                request_id: String::new(),
            })
        } else {
            Self::Users(ExportUsersRequest { user_ids: task.user_ids.clone(), request_id: String::new() })
        }
    }
}

/// The channels or users of a job, in the order they are exported.
#[derive(Debug)]
pub enum Items {
    /// Channels, each with its window (the job's when it has none of its own).
    Channels(Vec<ChannelRef>),
    /// User ids.
    Users(Vec<String>),
}

impl Items {
    /// How many channels or users.
    pub fn len(&self) -> usize {
        match self {
            Self::Channels(channels) => channels.len(),
            Self::Users(users) => users.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards: at most `shard_size` items each, in order.
    pub fn shards(&self, shard_size: usize) -> Vec<ShardRecord> {
        let size = shard_size.max(1);
        let task =
            |shard: usize| ExportJobTask { shard: u32::try_from(shard).unwrap_or(u32::MAX), ..Default::default() };
        let tasks: Vec<ExportJobTask> = match self {
            Self::Channels(channels) => channels
                .chunks(size)
                .enumerate()
                .map(|(shard, chunk)| ExportJobTask { channels: chunk.to_vec(), ..task(shard) })
                .collect(),
            Self::Users(users) => users
                .chunks(size)
                .enumerate()
                .map(|(shard, chunk)| ExportJobTask { user_ids: chunk.to_vec(), ..task(shard) })
                .collect(),
        };
        tasks.into_iter().map(|task| ShardRecord { task, ..Default::default() }).collect()
    }
}

/// Resolves a job's selector into its items: an explicit list as given, a channel query by
/// listing every channel it matches (at most `settings.max_channels`).
pub async fn resolve(
    request: &CreateExportJobRequest,
    client: &StreamClient,
    settings: &JobSettings,
) -> Result<Items, Status> {
    if let Some(items) = listed(request) {
        return Ok(items);
    }
    let Some(Selector::ChannelQuery(query)) = &request.selector else {
        return Err(status::invalid_request(vec![tonic_types::FieldViolation::new(
            "selector",
            "is required: channels, channel_query or users",
        )]));
    };
    let filter = match &query.filter {
        Some(filter) => json::from_struct(&*filter.to_struct().map_err(|_| unreadable_filter())?),
        None => Value::Null,
    };
    let mut lister = ChannelLister::new(client.clone(), filter, None);
    let mut channels = Vec::new();
    loop {
        let page = lister.next_page().await.map_err(|error| error.to_status())?;
        if page.is_empty() {
            return Ok(Items::Channels(channels));
        }
        for row in page {
            if channels.len() == settings.max_channels {
                return Err(status::job_too_large(settings.max_channels));
            }
            let channel = ChannelRef { r#type: row.channel_type, id: row.id, ..Default::default() };
            channels.push(with_window(request, channel));
        }
    }
}

/// The items of an explicit list, in order, duplicates dropped; `None` for a channel query.
pub fn listed(request: &CreateExportJobRequest) -> Option<Items> {
    match &request.selector {
        Some(Selector::Channels(list)) => {
            let mut seen = HashSet::new();
            let channels = list
                .channels
                .iter()
                .filter(|channel| seen.insert((channel.r#type.as_str(), channel.id.as_str())))
                .map(|channel| with_window(request, channel.clone()))
                .collect();
            Some(Items::Channels(channels))
        }
        Some(Selector::Users(list)) => {
            let mut seen = HashSet::new();
            Some(Items::Users(list.user_ids.iter().filter(|user| seen.insert(user.as_str())).cloned().collect()))
        }
        Some(Selector::ChannelQuery(_)) | None => None,
    }
}

/// A channel with the job's window, unless it has one of its own.
fn with_window(request: &CreateExportJobRequest, mut channel: ChannelRef) -> ChannelRef {
    if channel.messages_since.is_none() && channel.messages_until.is_none() {
        channel.messages_since = request.messages_since;
        channel.messages_until = request.messages_until;
    }
    channel
}

fn unreadable_filter() -> Status {
    status::invalid_request(vec![tonic_types::FieldViolation::new("channel_query.filter", "is not a readable Struct")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ChannelList;

    #[test]
    fn shards_hold_at_most_the_shard_size_in_order() {
        let channels: Vec<ChannelRef> = (0..60)
            .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("c{n}"), ..Default::default() })
            .collect();
        let shards = Items::Channels(channels).shards(25);
        assert_eq!(shards.iter().map(|shard| shard.task.channels.len()).collect::<Vec<_>>(), [25, 25, 10]);
        assert_eq!(shards[2].task.shard, 2);
        assert_eq!(shards[1].task.channels[0].id, "c25");
    }

    #[test]
    fn a_list_drops_duplicates_and_gives_the_jobs_window_to_channels_without_their_own() {
        let since = prost_types::Timestamp { seconds: 100, nanos: 0 };
        let own = prost_types::Timestamp { seconds: 5, nanos: 0 };
        let channel = |id: &str, since| ChannelRef {
            r#type: "t".into(),
            id: id.into(),
            messages_since: since,
            ..Default::default()
        };
        let request = CreateExportJobRequest {
            selector: Some(Selector::Channels(ChannelList {
                channels: vec![channel("a", None), channel("b", Some(own)), channel("a", None)],
            })),
            messages_since: Some(since),
            ..Default::default()
        };
        let Some(Items::Channels(channels)) = listed(&request) else { panic!("channels") };
        assert_eq!(channels.len(), 2);
        assert_eq!(channels[0].messages_since, Some(since));
        assert_eq!(channels[1].messages_since, Some(own));
    }
}
