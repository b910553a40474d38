//! QueryChannels (`POST /channels`): the filters, sorts and pages a server-side lister uses
//! (`../shared/stream-api.md` §1.11), evaluated over the data set.
//!
//! - Filter fields: `type`, `id`, `cid`, `team`, `created_at`, `last_message_at` (times as any
//!   RFC 3339 string). Operators: a bare value or `$eq`, `$ne`, `$in`, `$nin`, `$gt`, `$gte`,
//!   `$lt`, `$lte`, and `$and` / `$or` over filter objects; several keys in one object are
//!   and-ed. Anything else is an input error naming it (custom fields are not emulated).
//! - An empty filter is refused, as Stream refuses it.
//! - Sort: `[{"field", "direction": 1|-1}]` on `created_at`, `updated_at`, `last_message_at`,
//!   `last_updated`, `cid`, `id`, `type`, `member_count`; by default (or `[]`) `last_updated`
//!   descending.
//!   Rows equal on every key are ordered by `cid` (Stream leaves that order undefined; a lister
//!   must not depend on it, and this one order makes the emulator repeatable).
//! - `limit` 1..=30 (default 10; 0 means the default) and `offset` 0..=1000; past either,
//!   400 code 4.
//! - Soft-deleted channels are not listed.
//! - With `state: true` (the SDKs' default) each row also carries the newest `message_limit`
//!   messages (default 25, at most 300) and the first `member_limit` members (default and at
//!   most 100); with `state: false` both lists are empty.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{
    data::{Channel, DataSet},
    wire::timestamp,
};

/// The largest `limit`.
pub(crate) const MAX_LIMIT: u64 = 30;
/// The largest `offset`.
pub(crate) const MAX_OFFSET: u64 = 1_000;
const DEFAULT_LIMIT: u64 = 10;
const DEFAULT_MESSAGE_LIMIT: u64 = 25;
const MAX_MESSAGE_LIMIT: u64 = 300;
const MAX_MEMBER_LIMIT: u64 = 100;

/// Why a query is refused: the field it is about and what is wrong (an input error, code 4).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) field: String,
    pub(crate) problem: String,
}

fn refused(field: impl Into<String>, problem: impl Into<String>) -> Refused {
    Refused { field: field.into(), problem: problem.into() }
}

/// A parsed QueryChannels request.
#[derive(Debug)]
pub(crate) struct ChannelQuery {
    filter: Filter,
    sort: Vec<(Key, bool)>,
    limit: usize,
    offset: usize,
    state: bool,
    message_limit: usize,
    member_limit: usize,
}

#[derive(Debug)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Compare { key: Key, op: Op, value: Operand },
    In { key: Key, values: Vec<Operand>, negated: bool },
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A field a filter or a sort names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Type,
    Id,
    Cid,
    Team,
    CreatedAt,
    UpdatedAt,
    LastMessageAt,
    LastUpdated,
    MemberCount,
}

/// A channel's value of a key, or a filter's operand: they compare only with their own kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Operand {
    Text(String),
    Time(DateTime<Utc>),
    Number(i64),
    Absent,
}

impl Key {
    fn filterable(name: &str) -> Option<Key> {
        Some(match name {
            "type" => Key::Type,
            "id" => Key::Id,
            "cid" => Key::Cid,
            "team" => Key::Team,
            "created_at" => Key::CreatedAt,
            "last_message_at" => Key::LastMessageAt,
            _ => return None,
        })
    }

    fn sortable(name: &str) -> Option<Key> {
        Some(match name {
            "type" => Key::Type,
            "id" => Key::Id,
            "cid" => Key::Cid,
            "created_at" => Key::CreatedAt,
            "updated_at" => Key::UpdatedAt,
            "last_message_at" => Key::LastMessageAt,
            "last_updated" => Key::LastUpdated,
            "member_count" => Key::MemberCount,
            _ => return None,
        })
    }

    fn is_time(self) -> bool {
        matches!(self, Key::CreatedAt | Key::UpdatedAt | Key::LastMessageAt | Key::LastUpdated)
    }

    fn of(self, channel: &Channel) -> Operand {
        let time = |at: Option<DateTime<Utc>>| at.map_or(Operand::Absent, Operand::Time);
        match self {
            Key::Type => Operand::Text(channel.kind.to_owned()),
            Key::Id => Operand::Text(channel.id.clone()),
            Key::Cid => Operand::Text(channel.cid()),
            Key::Team => channel.team.map_or(Operand::Absent, |team| Operand::Text(team.to_owned())),
            Key::CreatedAt | Key::UpdatedAt => Operand::Time(channel.created_at),
            Key::LastMessageAt => time(channel.last_message_at()),
            Key::LastUpdated => {
                Operand::Time(channel.last_message_at().map_or(channel.created_at, |last| last.max(channel.created_at)))
            }
            Key::MemberCount => Operand::Number(channel.members.len() as i64),
        }
    }

    /// A filter's operand for this key, from JSON.
    fn operand(self, field: &str, value: &Value) -> Result<Operand, Refused> {
        match (self.is_time(), value) {
            (true, Value::String(text)) => DateTime::parse_from_rfc3339(text)
                .map(|at| Operand::Time(at.with_timezone(&Utc)))
                .map_err(|_| refused(field, format!("{text:?} is not an RFC 3339 time"))),
            (false, Value::String(text)) => Ok(Operand::Text(text.clone())),
            (_, other) => Err(refused(field, format!("wants a string, got {other}"))),
        }
    }
}

impl Filter {
    fn parse(field: &str, value: &Value) -> Result<Filter, Refused> {
        let Value::Object(map) = value else { return Err(refused(field, "must be an object")) };
        let mut all = Vec::with_capacity(map.len());
        for (name, condition) in map {
            let path = format!("{field}.{name}");
            all.push(match name.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = condition else {
                        return Err(refused(path, "must be an array of filter objects"));
                    };
                    if items.is_empty() {
                        return Err(refused(path, "must not be empty"));
                    }
                    let parts = items
                        .iter()
                        .enumerate()
                        .map(|(n, item)| Filter::parse(&format!("{path}[{n}]"), item))
                        .collect::<Result<Vec<_>, _>>()?;
                    if name == "$and" { Filter::And(parts) } else { Filter::Or(parts) }
                }
                _ if name.starts_with('$') => return Err(refused(path, format!("{name} is not a supported operator"))),
                _ => {
                    let key = Key::filterable(name)
                        .ok_or_else(|| refused(&path, "is not a field the emulator filters on"))?;
                    Filter::condition(key, &path, condition)?
                }
            });
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Filter::And(all) })
    }

    /// `{"field": VALUE}` or `{"field": {"$op": VALUE, ...}}`.
    fn condition(key: Key, path: &str, condition: &Value) -> Result<Filter, Refused> {
        let Value::Object(operators) = condition else {
            return Ok(Filter::Compare { key, op: Op::Eq, value: key.operand(path, condition)? });
        };
        if operators.is_empty() {
            return Err(refused(path, "has no operator"));
        }
        let mut all = Vec::with_capacity(operators.len());
        for (operator, value) in operators {
            let path = format!("{path}.{operator}");
            let op = match operator.as_str() {
                "$eq" => Op::Eq,
                "$ne" => Op::Ne,
                "$gt" => Op::Gt,
                "$gte" => Op::Gte,
                "$lt" => Op::Lt,
                "$lte" => Op::Lte,
                "$in" | "$nin" => {
                    let Value::Array(items) = value else { return Err(refused(path, "must be an array")) };
                    let values = items.iter().map(|item| key.operand(&path, item)).collect::<Result<_, _>>()?;
                    all.push(Filter::In { key, values, negated: operator == "$nin" });
                    continue;
                }
                other => return Err(refused(path, format!("{other} is not a supported operator"))),
            };
            all.push(Filter::Compare { key, op, value: key.operand(&path, value)? });
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Filter::And(all) })
    }

    fn matches(&self, channel: &Channel) -> bool {
        match self {
            Filter::And(all) => all.iter().all(|filter| filter.matches(channel)),
            Filter::Or(any) => any.iter().any(|filter| filter.matches(channel)),
            Filter::In { key, values, negated } => values.contains(&key.of(channel)) != *negated,
            Filter::Compare { key, op, value } => {
                let actual = key.of(channel);
                if actual == Operand::Absent {
                    return matches!(op, Op::Ne);
                }
                let ordering = actual.cmp(value);
                match op {
                    Op::Eq => ordering == Ordering::Equal,
                    Op::Ne => ordering != Ordering::Equal,
                    Op::Gt => ordering == Ordering::Greater,
                    Op::Gte => ordering != Ordering::Less,
                    Op::Lt => ordering == Ordering::Less,
                    Op::Lte => ordering != Ordering::Greater,
                }
            }
        }
    }
}

/// A non-negative integer member, or its default when absent or null.
fn count(body: &Map<String, Value>, field: &str, default: u64, max: u64) -> Result<u64, Refused> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => {
            let number = value.as_u64().ok_or_else(|| refused(field, "must be a non-negative integer"))?;
            if number > max {
                return Err(refused(field, format!("must be at most {max}, got {number}")));
            }
            Ok(number)
        }
    }
}

fn flag(body: &Map<String, Value>, field: &str) -> Result<bool, Refused> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(refused(field, "must be a boolean")),
    }
}

impl ChannelQuery {
    /// Parses a request body; every refusal names the field.
    pub(crate) fn parse(body: &Map<String, Value>) -> Result<Self, Refused> {
        let filter = match body.get("filter_conditions") {
            None | Some(Value::Null) => return Err(refused("filter_conditions", "is required")),
            Some(Value::Object(map)) if map.is_empty() => {
                return Err(refused(
                    "filter_conditions",
                    "an empty filter is not feasible for this endpoint because it's heavy, please pass some filters",
                ));
            }
            Some(value) => Filter::parse("filter_conditions", value)?,
        };
        let sort = match body.get("sort") {
            None | Some(Value::Null) => vec![(Key::LastUpdated, false)],
            // The Python SDK sends `[]` when no sort is given.
            Some(Value::Array(items)) if items.is_empty() => vec![(Key::LastUpdated, false)],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(n, item)| {
                    let path = format!("sort[{n}]");
                    let name = item.get("field").and_then(Value::as_str).unwrap_or_default();
                    let key = Key::sortable(name)
                        .ok_or_else(|| refused(format!("{path}.field"), format!("{name:?} is not a sortable field")))?;
                    match item.get("direction").and_then(Value::as_i64) {
                        Some(1) | None => Ok((key, true)),
                        Some(-1) => Ok((key, false)),
                        Some(other) => {
                            Err(refused(format!("{path}.direction"), format!("must be 1 or -1, got {other}")))
                        }
                    }
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(refused("sort", "must be an array of {field, direction}")),
        };
        let limit = match count(body, "limit", DEFAULT_LIMIT, MAX_LIMIT)? {
            0 => DEFAULT_LIMIT,
            limit => limit,
        };
        for field in ["watch", "presence"] {
            flag(body, field)?;
        }
        Ok(Self {
            filter,
            sort,
            limit: limit as usize,
            offset: count(body, "offset", 0, MAX_OFFSET)? as usize,
            state: flag(body, "state")?,
            message_limit: count(body, "message_limit", DEFAULT_MESSAGE_LIMIT, u64::MAX)?.min(MAX_MESSAGE_LIMIT)
                as usize,
            member_limit: count(body, "member_limit", MAX_MEMBER_LIMIT, u64::MAX)?.min(MAX_MEMBER_LIMIT) as usize,
        })
    }

    /// The page of matching channels, in the requested order.
    pub(crate) fn run<'a>(&self, data: &'a DataSet) -> Vec<&'a Channel> {
        let mut found: Vec<(Vec<Operand>, String, &Channel)> = data
            .channels
            .iter()
            .filter(|channel| channel.deleted_at.is_none() && self.filter.matches(channel))
            .map(|channel| (self.sort.iter().map(|(key, _)| key.of(channel)).collect(), channel.cid(), channel))
            .collect();
        found.sort_by(|(a, a_cid, _), (b, b_cid, _)| {
            let by_keys = a.iter().zip(b).zip(&self.sort).map(
                |((a, b), (_, ascending))| {
                    if *ascending { a.cmp(b) } else { b.cmp(a) }
                },
            );
            by_keys.fold(Ordering::Equal, Ordering::then).then_with(|| a_cid.cmp(b_cid))
        });
        found.into_iter().skip(self.offset).take(self.limit).map(|(_, _, channel)| channel).collect()
    }

    /// One row of the response: the channel, and its messages and members when `state` is set.
    pub(crate) fn row(&self, channel: &Channel, data: &DataSet) -> Value {
        let mut json_channel = channel.json(data);
        if let (Value::Object(map), Some(last)) = (&mut json_channel, channel.last_message_at()) {
            map.insert("last_message_at".to_owned(), json!(timestamp(last)));
        }
        let (messages, members) = if self.state {
            let all = channel.messages();
            let newest = &all[all.len().saturating_sub(self.message_limit)..];
            let users = |id: &str| data.user(id).map(super::data::User::json);
            (
                newest.iter().map(|message| message.json(channel, users(&message.user_id), false)).collect(),
                channel.members.iter().take(self.member_limit).map(|member| member.json(data)).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        json!({
            "channel": json_channel,
            "messages": messages,
            "members": members,
            "pinned_messages": [],
            "read": [],
            "watcher_count": 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(body: Value) -> Result<ChannelQuery, Refused> {
        ChannelQuery::parse(body.as_object().expect("an object"))
    }

    fn cids(found: &[&Channel]) -> Vec<String> {
        found.iter().map(|channel| channel.cid()).collect()
    }

    #[test]
    fn an_empty_or_missing_filter_is_refused() {
        assert_eq!(query(json!({"filter_conditions": {}})).unwrap_err().field, "filter_conditions");
        assert_eq!(query(json!({})).unwrap_err().field, "filter_conditions");
    }

    #[test]
    fn limits_past_the_documented_maximum_are_refused_with_the_field() {
        let refusal = query(json!({"filter_conditions": {"type": "messaging"}, "limit": 31})).unwrap_err();
        assert_eq!(refusal.field, "limit");
        let refusal = query(json!({"filter_conditions": {"type": "messaging"}, "offset": 1001})).unwrap_err();
        assert_eq!(refusal.field, "offset");
        assert!(query(json!({"filter_conditions": {"type": "messaging"}, "limit": 30, "offset": 1000})).is_ok());
    }

    #[test]
    fn unknown_operators_and_fields_are_named() {
        let refusal = query(json!({"filter_conditions": {"type": {"$regex": "m.*"}}})).unwrap_err();
        assert_eq!(refusal.field, "filter_conditions.type.$regex");
        let refusal = query(json!({"filter_conditions": {"color": "red"}})).unwrap_err();
        assert_eq!(refusal.field, "filter_conditions.color");
        let refusal = query(json!({"filter_conditions": {"created_at": {"$gt": "yesterday"}}})).unwrap_err();
        assert_eq!(refusal.field, "filter_conditions.created_at.$gt");
    }

    #[test]
    fn filters_select_by_type_cid_and_time_and_skip_soft_deleted_channels() {
        let data = DataSet::generate(42);
        let messaging = query(json!({"filter_conditions": {"type": "messaging"}, "limit": 30})).unwrap();
        let found = cids(&messaging.run(&data));
        assert!(found.contains(&"messaging:general".to_owned()));
        assert!(!found.contains(&"messaging:archived".to_owned()), "soft-deleted channels are not listed");
        assert!(found.iter().all(|cid| cid.starts_with("messaging:")));

        let some =
            query(json!({"filter_conditions": {"cid": {"$in": ["team:engineering", "commerce:order-1001"]}}})).unwrap();
        let mut found = cids(&some.run(&data));
        found.sort();
        assert_eq!(found, ["commerce:order-1001", "team:engineering"]);

        let general = &data.channels[data.channel_index("messaging:general").unwrap()];
        let at = timestamp(general.created_at);
        let after = query(json!({"filter_conditions": {"$and": [{"type": "messaging"}, {"created_at": {"$gt": at}}]}}))
            .unwrap();
        assert!(after.run(&data).iter().all(|channel| channel.created_at > general.created_at));
        let not_after =
            query(json!({"filter_conditions": {"created_at": {"$lte": at}, "cid": "messaging:general"}})).unwrap();
        assert_eq!(cids(&not_after.run(&data)), ["messaging:general"]);
    }

    #[test]
    fn sorting_is_by_the_keys_then_cid_and_pages_by_offset() {
        let data = DataSet::generate(42).with_synthetic_channels(200, 42);
        let sorted = |offset: u64| {
            query(json!({
                "filter_conditions": {"team": "acme"},
                "sort": [{"field": "created_at", "direction": 1}],
                "limit": 30,
                "offset": offset,
            }))
            .unwrap()
            .run(&data)
        };
        let (first, second) = (sorted(0), sorted(30));
        assert_eq!(first.len(), 30);
        let mut all = first.clone();
        all.extend(second);
        assert!(
            all.windows(2).all(|pair| { (pair[0].created_at, pair[0].cid()) < (pair[1].created_at, pair[1].cid()) })
        );
        let descending = query(json!({
            "filter_conditions": {"team": "acme"},
            "sort": [{"field": "created_at", "direction": -1}],
        }))
        .unwrap()
        .run(&data);
        assert!(descending.windows(2).all(|pair| pair[0].created_at >= pair[1].created_at));
    }

    #[test]
    fn state_adds_the_newest_messages_and_members() {
        let data = DataSet::generate(42);
        let general = &data.channels[data.channel_index("messaging:general").unwrap()];
        let with_state = query(json!({"filter_conditions": {"cid": "messaging:general"}, "state": true,
            "message_limit": 5, "member_limit": 3}))
        .unwrap();
        let row = with_state.row(general, &data);
        assert_eq!(row["messages"].as_array().unwrap().len(), 5);
        assert_eq!(row["members"].as_array().unwrap().len(), 3);
        assert_eq!(row["channel"]["cid"], "messaging:general");
        assert!(row["channel"]["last_message_at"].is_string());
        let without = query(json!({"filter_conditions": {"cid": "messaging:general"}, "state": false})).unwrap();
        assert!(without.row(general, &data)["messages"].as_array().unwrap().is_empty());
    }
}
