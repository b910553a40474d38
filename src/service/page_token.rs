//! Page tokens (`ListTasks`, `ListExportJobs`, `ListExportJobTasks`): where a listing stopped
//! (the last record it scanned), sealed with the server's key (ChaCha20-Poly1305) together with
//! the caller's name and the kind of listing.
//! The position may be another caller's task, so the token hides it; and a token cannot be
//! forged, altered, or used by another caller. Opaque to clients (hex).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::caller::Caller;
use crate::store::registry::Cursor;

const VERSION: u8 = 3;

fn key(key: &[u8; 32]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?))
}

/// Which listing a token continues: a token of one is refused by every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `ListTasks` over every task.
    AllTasks = 0,
    /// `ListTasks` over the caller's own tasks (the owner index).
    OwnTasks = 1,
    /// `ListExportJobs` over every job.
    AllJobs = 2,
    /// `ListExportJobs` over the caller's own jobs.
    OwnJobs = 3,
    /// `ListExportJobTasks` (the cursor's id is the job's).
    JobTasks = 4,
    /// `ListExportSchedules` over every schedule.
    AllSchedules = 5,
    /// `ListExportSchedules` over the caller's own schedules.
    OwnSchedules = 6,
}

impl Listing {
    /// The `ListTasks` listing, over the caller's own tasks or every task.
    pub fn tasks(own_only: bool) -> Self {
        if own_only { Self::OwnTasks } else { Self::AllTasks }
    }

    /// The `ListExportSchedules` listing, over the caller's own schedules or every schedule.
    pub fn schedules(own_only: bool) -> Self {
        if own_only { Self::OwnSchedules } else { Self::AllSchedules }
    }

    /// The `ListExportJobs` listing, over the caller's own jobs or every job.
    pub fn jobs(own_only: bool) -> Self {
        if own_only { Self::OwnJobs } else { Self::AllJobs }
    }
}

/// What the seal binds the position to: the format, the caller, the kind of listing.
fn bound_to(caller: &Caller, listing: Listing) -> Vec<u8> {
    let mut aad = vec![VERSION, listing as u8];
    aad.extend_from_slice(caller.name.as_bytes());
    aad
}

/// The token that continues after `after` (empty if it cannot be sealed, which a 32-byte
/// key never causes).
pub fn write(after: &Cursor, caller: &Caller, listing: Listing, server_key: &[u8; 32]) -> String {
    let Some(key) = key(server_key) else { return String::new() };
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut sealed = format!("{}|{}", after.created_micros, after.task_id).into_bytes();
    let aad = Aad::from(bound_to(caller, listing));
    if key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut sealed).is_err() {
        return String::new();
    }
    format!("{VERSION:02x}{}{}", hex::encode(nonce), hex::encode(sealed))
}

/// The position in a token, if this server gave it to this caller for this kind of listing.
pub fn read(token: &str, caller: &Caller, listing: Listing, server_key: &[u8; 32]) -> Option<Cursor> {
    let bytes = hex::decode(token).ok()?;
    let (version, rest) = bytes.split_first()?;
    (*version == VERSION && rest.len() > NONCE_LEN).then_some(())?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let mut sealed = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let aad = Aad::from(bound_to(caller, listing));
    let opened = key(server_key)?.open_in_place(nonce, aad, &mut sealed).ok()?;
    let (micros, task_id) = std::str::from_utf8(opened).ok()?.split_once('|')?;
    Some(Cursor { created_micros: micros.parse().ok()?, task_id: task_id.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller { name: name.into(), source: crate::service::caller::CallerSource::Token }
    }

    #[test]
    fn a_token_hides_its_position_and_is_good_only_for_its_caller_its_kind_of_listing_and_this_key() {
        let key = [7u8; 32];
        let at = Cursor { created_micros: 42, task_id: "0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10".into() };
        let token = write(&at, &caller("a"), Listing::AllTasks, &key);
        assert!(!token.contains(&hex::encode(&at.task_id)) && !token.contains("0b6c7d7e"), "{token}");
        assert_eq!(read(&token, &caller("a"), Listing::AllTasks, &key), Some(at.clone()));
        assert_eq!(read(&token, &caller("b"), Listing::AllTasks, &key), None, "another caller");
        assert_eq!(read(&token, &caller("a"), Listing::OwnTasks, &key), None, "another kind of listing");
        assert_eq!(read(&token, &caller("a"), Listing::AllJobs, &key), None, "another kind of listing");
        assert_eq!(read(&token, &caller("a"), Listing::AllTasks, &[8u8; 32]), None, "another server key");
        let mut altered = hex::decode(&token).unwrap();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(read(&hex::encode(altered), &caller("a"), Listing::AllTasks, &key), None, "altered");
        assert_eq!(read("", &caller("a"), Listing::AllTasks, &key), None);
        assert_eq!(read("zz", &caller("a"), Listing::AllTasks, &key), None);
    }
}
