//! The deterministic data set the emulator exports.
//!
//! Everything is generated from the configured seed with ChaCha8, so the same seed always gives
//! byte-identical export files. The layout (ids, counts, ranges) is fixed; the seed varies names,
//! membership, authors, texts, timestamps, deletions and reactions.
//!
//! - 50 regular users `user-00` … `user-49` (`user-00` is an `admin`), each with custom fields
//!   `name`, `image`, `team` and a nested `profile` object; plus [`HEAVY_USER`].
//! - Channels of the types `messaging`, `livestream`, `team` and `commerce` (see the constants),
//!   with members, messages and reactions. All message timestamps lie in
//!   [`DATA_START`, `DATA_END`).
//! - About 6 % of the messages are soft-deleted (`type: "deleted"`, `deleted_at` set).
//! - [`TRUNCATED_CHANNEL`] has a `truncated_at`; the messages created at or before it are hidden
//!   unless `include_truncated_messages` is set.
//! - [`DELETED_CHANNEL`] is soft-deleted (`deleted_at` set); it is left out of exports unless
//!   `include_soft_deleted_channels` is set.
//! - [`HEAVY_USER`] wrote [`HEAVY_USER_MESSAGES`] messages in [`HEAVY_CHANNEL`]; they are made on
//!   demand from their index (no start-up cost).
//! - On request ([`DataSet::with_synthetic_channels`]), any number of bulk channels
//!   `messaging:bulk-NNNNNN` for listing at scale (QueryChannels, export jobs): created over the
//!   year before [`DATA_START`], [`BULK_IMPORT_SIZE`] of them (fewer in a set under 90) in the
//!   same microsecond (as a bulk import leaves them), each in one of three `team`s, with two
//!   members and two messages.

use std::{borrow::Cow, collections::HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::wire::timestamp;

/// A channel with members, regular, reacted and soft-deleted messages.
pub const KNOWN_CHANNEL: &str = "messaging:general";
/// A channel with a `truncated_at` in the middle of its history.
pub const TRUNCATED_CHANNEL: &str = "messaging:truncated";
/// A soft-deleted channel.
pub const DELETED_CHANNEL: &str = "messaging:archived";
/// A `livestream` channel.
pub const LIVESTREAM_CHANNEL: &str = "livestream:launch";
/// A `team` channel.
pub const TEAM_CHANNEL: &str = "team:engineering";
/// A `commerce` channel.
pub const COMMERCE_CHANNEL: &str = "commerce:order-1001";
/// The channel holding the heavy user's messages.
pub const HEAVY_CHANNEL: &str = "team:firehose";
/// A channel id that does not exist.
pub const UNKNOWN_CHANNEL: &str = "messaging:no-such-channel";
/// A regular user, member of [`KNOWN_CHANNEL`] with messages and reactions.
pub const KNOWN_USER: &str = "user-01";
/// The user with more than 10 000 messages (the synchronous user export refuses it).
pub const HEAVY_USER: &str = "heavy-user";
/// How many messages [`HEAVY_USER`] has.
pub const HEAVY_USER_MESSAGES: usize = 10_050;
/// A user id that does not exist.
pub const UNKNOWN_USER: &str = "no-such-user";
/// How many regular users there are.
pub const USER_COUNT: usize = 50;
/// Start of the message time range (inclusive).
pub const DATA_START: &str = "2024-01-01T00:00:00Z";
/// End of the message time range (exclusive).
pub const DATA_END: &str = "2024-04-01T00:00:00Z";

/// How many synthetic channels share one `created_at` (a bulk import): more than a
/// QueryChannels page, so that paging on `created_at` alone cannot get past them.
pub const BULK_IMPORT_SIZE: usize = 45;
/// The `team`s synthetic channels belong to, by channel number modulo 3.
pub const CHANNEL_TEAMS: [&str; 3] = ["acme", "globex", "initech"];

/// The synchronous user-export limit.
pub(crate) const USER_EXPORT_MESSAGE_LIMIT: usize = 10_000;

pub(crate) fn data_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().unwrap_or(DateTime::UNIX_EPOCH)
}

fn data_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 4, 1, 0, 0, 0).single().unwrap_or(DateTime::UNIX_EPOCH)
}

#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) role: &'static str,
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) team: &'static str,
    pub(crate) title: &'static str,
    pub(crate) city: &'static str,
    pub(crate) country: &'static str,
    pub(crate) languages: Vec<&'static str>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_active: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct Reaction {
    pub(crate) user_id: String,
    pub(crate) kind: &'static str,
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) text: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    pub(crate) reactions: Vec<Reaction>,
}

#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) user_id: String,
    pub(crate) role: &'static str,
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(crate) struct Channel {
    pub(crate) kind: &'static str,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_by: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) truncated_at: Option<DateTime<Utc>>,
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    /// The multi-tenant `team` (synthetic channels only).
    pub(crate) team: Option<&'static str>,
    pub(crate) members: Vec<Member>,
    messages: Vec<Message>,
    heavy: bool,
    /// How many messages the heavy channel holds (made on demand).
    heavy_messages: usize,
}

impl Channel {
    pub(crate) fn cid(&self) -> String {
        format!("{}:{}", self.kind, self.id)
    }

    /// When the newest message was created (QueryChannels' `last_message_at`).
    pub(crate) fn last_message_at(&self) -> Option<DateTime<Utc>> {
        if self.heavy {
            return self.heavy_messages.checked_sub(1).map(|last| heavy_message(last).created_at);
        }
        self.messages.last().map(|message| message.created_at)
    }

    /// The channel's messages, oldest first (the heavy channel's are made now).
    pub(crate) fn messages(&self) -> Cow<'_, [Message]> {
        if self.heavy {
            Cow::Owned((0..self.heavy_messages).map(heavy_message).collect())
        } else {
            Cow::Borrowed(&self.messages)
        }
    }
}

fn heavy_message(index: usize) -> Message {
    let span = (data_end() - data_start()).num_seconds();
    let step = span / HEAVY_USER_MESSAGES as i64;
    Message {
        id: format!("heavy-{index:05}"),
        user_id: HEAVY_USER.to_owned(),
        text: format!("firehose update #{index}"),
        created_at: data_start() + Duration::seconds(step * index as i64 + 7),
        deleted_at: None,
        reactions: Vec::new(),
    }
}

/// The whole data set.
#[derive(Debug)]
pub(crate) struct DataSet {
    pub(crate) users: Vec<User>,
    pub(crate) channels: Vec<Channel>,
    user_index: HashMap<String, usize>,
    /// Channel index by cid.
    channel_index: HashMap<String, usize>,
    /// Per user: (channel index, message index) of the messages they wrote (heavy excluded).
    authored: HashMap<String, Vec<(usize, usize)>>,
    /// Per user: (channel index, message index, reaction index) of their reactions.
    reacted: HashMap<String, Vec<(usize, usize, usize)>>,
    /// How many messages [`HEAVY_USER`] wrote.
    heavy_messages: usize,
}

const FIRST: [&str; 16] = [
    "Ada", "Bruno", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kemi", "Luca", "Mira", "Noor",
    "Oscar", "Priya",
];
const LAST: [&str; 12] =
    ["Lovelace", "Silva", "Wei", "Okafor", "Yilmaz", "Adeyemi", "Berg", "Tanaka", "Costa", "Weber", "Haddad", "Rossi"];
const TEAMS: [&str; 4] = ["red", "blue", "green", "gold"];
const TITLES: [&str; 5] = ["engineer", "designer", "support", "sales", "manager"];
const PLACES: [(&str, &str); 5] =
    [("Amsterdam", "NL"), ("Boulder", "US"), ("Lagos", "NG"), ("Osaka", "JP"), ("Lisbon", "PT")];
const LANGUAGES: [&str; 5] = ["en", "nl", "ja", "pt", "yo"];
const WORDS: [&str; 20] = [
    "ship",
    "the",
    "release",
    "today",
    "review",
    "please",
    "looks",
    "good",
    "order",
    "delivered",
    "thanks",
    "meeting",
    "moved",
    "bug",
    "fixed",
    "launch",
    "is",
    "live",
    "coffee",
    "later",
];
const REACTIONS: [&str; 4] = ["like", "love", "haha", "wow"];

struct ChannelSpec {
    kind: &'static str,
    id: &'static str,
    name: &'static str,
    members: usize,
    messages: usize,
}

const SPECS: [ChannelSpec; 11] = [
    ChannelSpec { kind: "messaging", id: "general", name: "General", members: 20, messages: 150 },
    ChannelSpec { kind: "messaging", id: "truncated", name: "Truncated history", members: 8, messages: 60 },
    ChannelSpec { kind: "messaging", id: "archived", name: "Archived (deleted)", members: 5, messages: 30 },
    ChannelSpec { kind: "livestream", id: "launch", name: "Launch day", members: 30, messages: 120 },
    ChannelSpec { kind: "team", id: "engineering", name: "Engineering", members: 12, messages: 80 },
    ChannelSpec { kind: "commerce", id: "order-1001", name: "Order 1001", members: 3, messages: 25 },
    ChannelSpec { kind: "commerce", id: "order-1002", name: "Order 1002", members: 3, messages: 15 },
    ChannelSpec { kind: "messaging", id: "dm-a", name: "", members: 2, messages: 20 },
    ChannelSpec { kind: "messaging", id: "dm-b", name: "", members: 2, messages: 20 },
    ChannelSpec { kind: "messaging", id: "dm-c", name: "", members: 2, messages: 20 },
    ChannelSpec { kind: "team", id: "firehose", name: "Firehose", members: 0, messages: 0 },
];

fn random_time(rng: &mut ChaCha8Rng) -> DateTime<Utc> {
    let span = (data_end() - data_start()).num_microseconds().unwrap_or(0);
    data_start() + Duration::microseconds(rng.random_range(0..span.max(1)))
}

fn random_id(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string()
}

impl DataSet {
    /// Generates the data set for a seed.
    pub(crate) fn generate(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut users: Vec<User> = (0..USER_COUNT)
            .map(|n| {
                let id = format!("user-{n:02}");
                let place = PLACES[rng.random_range(0..PLACES.len())];
                let mut languages = vec![LANGUAGES[rng.random_range(0..LANGUAGES.len())]];
                if rng.random_bool(0.4) {
                    languages.push("en");
                }
                languages.dedup();
                User {
                    image: format!("https://avatars.example.com/{id}.png"),
                    role: if n == 0 { "admin" } else { "user" },
                    name: format!(
                        "{} {}",
                        FIRST[rng.random_range(0..FIRST.len())],
                        LAST[rng.random_range(0..LAST.len())]
                    ),
                    team: TEAMS[rng.random_range(0..TEAMS.len())],
                    title: TITLES[rng.random_range(0..TITLES.len())],
                    city: place.0,
                    country: place.1,
                    languages,
                    created_at: data_start() - Duration::seconds(rng.random_range(86_400..(365 * 86_400))),
                    last_active: random_time(&mut rng),
                    id,
                }
            })
            .collect();
        users.push(User {
            id: HEAVY_USER.to_owned(),
            role: "user",
            name: "Heavy Poster".to_owned(),
            image: format!("https://avatars.example.com/{HEAVY_USER}.png"),
            team: "gold",
            title: "bot",
            city: "Boulder",
            country: "US",
            languages: vec!["en"],
            created_at: data_start() - Duration::days(30),
            last_active: data_end() - Duration::hours(1),
        });

        let regular: Vec<String> = users.iter().take(USER_COUNT).map(|user| user.id.clone()).collect();
        let mut channels = Vec::with_capacity(SPECS.len());
        for spec in &SPECS {
            let mut pool = regular.clone();
            pool.shuffle(&mut rng);
            let mut member_ids: Vec<String> = pool.into_iter().take(spec.members).collect();
            if spec.id == "general" && !member_ids.iter().any(|id| id == KNOWN_USER) {
                member_ids[0] = KNOWN_USER.to_owned();
            }
            let heavy = spec.id == "firehose";
            if heavy {
                member_ids = vec![HEAVY_USER.to_owned(), KNOWN_USER.to_owned()];
            }
            let created_at = data_start() - Duration::days(rng.random_range(1..60));
            let members: Vec<Member> = member_ids
                .iter()
                .enumerate()
                .map(|(n, id)| Member {
                    user_id: id.clone(),
                    role: if n == 0 { "owner" } else { "member" },
                    created_at: created_at + Duration::minutes(n as i64),
                })
                .collect();
            let mut messages: Vec<Message> = (0..spec.messages)
                .map(|_| {
                    let author = member_ids[rng.random_range(0..member_ids.len())].clone();
                    let created_at = random_time(&mut rng);
                    let words = rng.random_range(2..9);
                    let text =
                        (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ");
                    let deleted_at =
                        rng.random_bool(0.06).then(|| created_at + Duration::minutes(rng.random_range(1..600)));
                    let mut reactions = Vec::new();
                    if rng.random_bool(0.3) {
                        let mut reactors = member_ids.clone();
                        reactors.shuffle(&mut rng);
                        let count = rng.random_range(1..=3).min(reactors.len());
                        for reactor in reactors.into_iter().take(count) {
                            reactions.push(Reaction {
                                user_id: reactor,
                                kind: REACTIONS[rng.random_range(0..REACTIONS.len())],
                                created_at: created_at + Duration::seconds(rng.random_range(5..7200)),
                            });
                        }
                    }
                    Message { id: random_id(&mut rng), user_id: author, text, created_at, deleted_at, reactions }
                })
                .collect();
            messages.sort_by_key(|message| message.created_at);
            let truncated_at = (spec.id == "truncated").then(|| data_start() + Duration::days(45));
            let deleted_at = (spec.id == "archived").then(|| data_end() - Duration::days(10));
            channels.push(Channel {
                kind: spec.kind,
                id: spec.id.to_owned(),
                name: spec.name.to_owned(),
                created_by: member_ids.first().cloned().unwrap_or_default(),
                created_at,
                truncated_at,
                deleted_at,
                team: None,
                members,
                messages,
                heavy,
                heavy_messages: HEAVY_USER_MESSAGES,
            });
        }

        let user_index = users.iter().enumerate().map(|(n, user)| (user.id.clone(), n)).collect();
        let mut data = Self {
            users,
            channels: Vec::new(),
            user_index,
            channel_index: HashMap::new(),
            authored: HashMap::new(),
            reacted: HashMap::new(),
            heavy_messages: HEAVY_USER_MESSAGES,
        };
        data.add_channels(channels);
        data
    }

    /// Appends channels and indexes them, their messages and reactions.
    fn add_channels(&mut self, channels: Vec<Channel>) {
        for channel in channels {
            let c = self.channels.len();
            for (m, message) in channel.messages.iter().enumerate() {
                self.authored.entry(message.user_id.clone()).or_default().push((c, m));
                for (r, reaction) in message.reactions.iter().enumerate() {
                    self.reacted.entry(reaction.user_id.clone()).or_default().push((c, m, r));
                }
            }
            self.channel_index.insert(channel.cid(), c);
            self.channels.push(channel);
        }
    }

    /// The same data set with `count` synthetic channels added (see the module's comment). They
    /// come from their own random stream, so the rest of the data set does not change.
    pub(crate) fn with_synthetic_channels(mut self, count: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_b01c);
        let year = Duration::days(365).num_microseconds().unwrap_or(0);
        let first = data_start() - Duration::days(366);
        let step = year / count.max(1) as i64;
        let bulk = count / 2..(count / 2 + BULK_IMPORT_SIZE).min(count);
        let channels = (0..count)
            .map(|n| {
                let number = if bulk.contains(&n) { bulk.start } else { n };
                let created_at = first + Duration::microseconds(step * number as i64 + 1);
                let authors = [
                    format!("user-{:02}", rng.random_range(0..USER_COUNT)),
                    format!("user-{:02}", rng.random_range(0..USER_COUNT)),
                ];
                let members = authors
                    .iter()
                    .enumerate()
                    .map(|(k, id)| Member {
                        user_id: id.clone(),
                        role: if k == 0 { "owner" } else { "member" },
                        created_at,
                    })
                    .collect();
                let mut messages: Vec<Message> = authors
                    .iter()
                    .map(|author| Message {
                        id: random_id(&mut rng),
                        user_id: author.clone(),
                        text: WORDS[rng.random_range(0..WORDS.len())].to_owned(),
                        created_at: random_time(&mut rng),
                        deleted_at: None,
                        reactions: Vec::new(),
                    })
                    .collect();
                messages.sort_by_key(|message| message.created_at);
                Channel {
                    kind: "messaging",
                    id: format!("bulk-{n:06}"),
                    name: format!("Bulk {n}"),
                    created_by: authors[0].clone(),
                    created_at,
                    truncated_at: None,
                    deleted_at: None,
                    team: Some(CHANNEL_TEAMS[n % CHANNEL_TEAMS.len()]),
                    members,
                    messages,
                    heavy: false,
                    heavy_messages: 0,
                }
            })
            .collect();
        self.add_channels(channels);
        self
    }

    /// The same data set with [`HEAVY_USER`] holding `count` messages instead of
    /// [`HEAVY_USER_MESSAGES`] (under the synchronous export limit, the largest exportable user).
    pub(crate) fn with_heavy_user_messages(mut self, count: usize) -> Self {
        self.heavy_messages = count;
        for channel in self.channels.iter_mut().filter(|channel| channel.heavy) {
            channel.heavy_messages = count;
        }
        self
    }

    /// The channel of [`HEAVY_USER`]'s messages.
    pub(crate) fn heavy_channel(&self) -> Option<&Channel> {
        self.channels.iter().find(|channel| channel.heavy)
    }

    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.user_index.get(id).map(|&n| &self.users[n])
    }

    pub(crate) fn channel_index(&self, cid: &str) -> Option<usize> {
        self.channel_index.get(cid).copied()
    }

    /// How many messages a user wrote.
    pub(crate) fn message_count(&self, user_id: &str) -> usize {
        if user_id == HEAVY_USER {
            return self.heavy_messages;
        }
        self.authored.get(user_id).map_or(0, Vec::len)
    }

    /// (channel, message) pairs of a user's messages, oldest channel first (heavy excluded).
    pub(crate) fn authored(&self, user_id: &str) -> Vec<(&Channel, &Message)> {
        self.authored
            .get(user_id)
            .map(|list| list.iter().map(|&(c, m)| (&self.channels[c], &self.channels[c].messages[m])).collect())
            .unwrap_or_default()
    }

    /// (channel, message, reaction) triples of a user's reactions.
    pub(crate) fn reactions_by(&self, user_id: &str) -> Vec<(&Channel, &Message, &Reaction)> {
        self.reacted
            .get(user_id)
            .map(|list| {
                list.iter()
                    .map(|&(c, m, r)| {
                        let message = &self.channels[c].messages[m];
                        (&self.channels[c], message, &message.reactions[r])
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

// ---- JSON renderings shared by the routes and the export files ----

impl User {
    /// A UserResponse-like object with the custom fields at the top level.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "role": self.role,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at),
            "last_active": timestamp(self.last_active),
            "banned": false,
            "online": false,
            "name": self.name,
            "image": self.image,
            "team": self.team,
            "profile": {
                "title": self.title,
                "location": {"city": self.city, "country": self.country},
                "languages": self.languages,
            },
        })
    }
}

impl Reaction {
    /// A ReactionResponse-like object; `user` is embedded or `null`.
    pub(crate) fn json(&self, message: &Message, user: Option<Value>) -> Value {
        json!({
            "message_id": message.id,
            "user_id": self.user_id,
            "user": user,
            "type": self.kind,
            "score": 1,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at),
        })
    }
}

impl Message {
    pub(crate) fn updated_at(&self) -> DateTime<Utc> {
        self.deleted_at.unwrap_or(self.created_at)
    }

    /// The text as exported: cleared for deleted messages when asked.
    pub(crate) fn text(&self, clear_deleted: bool) -> &str {
        if clear_deleted && self.deleted_at.is_some() { "" } else { &self.text }
    }

    /// A MessageResponse-like object.
    pub(crate) fn json(&self, channel: &Channel, user: Option<Value>, clear_deleted: bool) -> Value {
        let text = self.text(clear_deleted);
        let mut counts = serde_json::Map::new();
        for reaction in &self.reactions {
            let entry = counts.entry(reaction.kind.to_owned()).or_insert(json!(0));
            *entry = json!(entry.as_i64().unwrap_or(0) + 1);
        }
        let mut value = json!({
            "id": self.id,
            "cid": channel.cid(),
            "text": text,
            "html": if text.is_empty() { String::new() } else { format!("<p>{text}</p>\n") },
            "type": if self.deleted_at.is_some() { "deleted" } else { "regular" },
            "user": user,
            "attachments": [],
            "latest_reactions": self.reactions.iter().map(|r| r.json(self, None)).collect::<Vec<_>>(),
            "own_reactions": [],
            "reaction_counts": counts.clone(),
            "reaction_scores": counts,
            "reply_count": 0,
            "mentioned_users": [],
            "pinned": false,
            "silent": false,
            "shadowed": false,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at()),
        });
        if let (Some(deleted_at), Value::Object(map)) = (self.deleted_at, &mut value) {
            map.insert("deleted_at".to_owned(), json!(timestamp(deleted_at)));
        }
        value
    }
}

impl Channel {
    /// A ChannelResponse-like object.
    pub(crate) fn json(&self, data: &DataSet) -> Value {
        let mut value = json!({
            "id": self.id,
            "type": self.kind,
            "cid": self.cid(),
            "name": self.name,
            "created_by": data.user(&self.created_by).map(User::json),
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at),
            "frozen": false,
            "disabled": false,
            "member_count": self.members.len(),
            "config": {"name": self.kind, "reactions": true, "replies": true, "typing_events": true},
        });
        if let Value::Object(map) = &mut value {
            if let Some(at) = self.truncated_at {
                map.insert("truncated_at".to_owned(), json!(timestamp(at)));
            }
            if let Some(at) = self.deleted_at {
                map.insert("deleted_at".to_owned(), json!(timestamp(at)));
            }
            if let Some(team) = self.team {
                map.insert("team".to_owned(), json!(team));
            }
        }
        value
    }
}

impl Member {
    /// A ChannelMember-like object.
    pub(crate) fn json(&self, data: &DataSet) -> Value {
        json!({
            "user_id": self.user_id,
            "user": data.user(&self.user_id).map(User::json),
            "status": "member",
            "role": self.role,
            "channel_role": if self.role == "owner" { "channel_moderator" } else { "channel_member" },
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at),
            "banned": false,
            "shadow_banned": false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_fast() {
        let started = std::time::Instant::now();
        let a = DataSet::generate(7);
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        let b = DataSet::generate(7);
        assert_eq!(a.users.len(), USER_COUNT + 1);
        assert_eq!(format!("{:?}", a.channels), format!("{:?}", b.channels));
        assert!(a.channel_index(KNOWN_CHANNEL).is_some());
        assert!(a.message_count(KNOWN_USER) > 0);
        assert_eq!(a.message_count(HEAVY_USER), HEAVY_USER_MESSAGES);
    }
}
