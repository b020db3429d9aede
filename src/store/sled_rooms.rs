//! Rooms in sled: the tree `rooms`, three kinds of key.
//! - `r` + room JID → the room's record, JSON;
//! - `m` + member JID + NUL + room JID → nothing: each user's rooms, kept
//!   in the same atomic batch as the record that lists them;
//! - `v` + room JID + NUL + member JID → the member's [`ViewMask`] of the
//!   room's archive, when they deleted something from it.
//!
//! The messages are in the archive, as the conversation of the room with
//! itself, in the room's own view: deleting the room removes that view,
//! and the archive reclaims the bytes.

use std::collections::BTreeSet;

use xmpp_parsers::jid::BareJid;

use super::sled::{e, SledStore};
use super::{BoxFuture, RoomRecord, RoomStore, StoreError, StoreResult, ViewMask};

fn record_key(room: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + room.len());
    k.push(b'r');
    k.extend_from_slice(room.as_bytes());
    k
}

fn member_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user.len());
    k.push(b'm');
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

fn member_key(user: &str, room: &str) -> Vec<u8> {
    let mut k = member_prefix(user);
    k.extend_from_slice(room.as_bytes());
    k
}

fn view_prefix(room: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + room.len());
    k.push(b'v');
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k
}

fn view_key(room: &str, member: &str) -> Vec<u8> {
    let mut k = view_prefix(room);
    k.extend_from_slice(member.as_bytes());
    k
}

impl SledStore {
    fn read_room(&self, room: &str) -> StoreResult<Option<RoomRecord>> {
        match self.rooms.get(record_key(room)).map_err(e)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|err| StoreError(format!("room record of {room} unreadable: {err}"))),
        }
    }
}

impl RoomStore for SledStore {
    fn room<'a>(&'a self, room: &'a BareJid) -> BoxFuture<'a, StoreResult<Option<RoomRecord>>> {
        Box::pin(async move { self.read_room(room.as_str()) })
    }

    fn put_room(&self, room: RoomRecord) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let old: BTreeSet<String> = self
                .read_room(&room.jid)?
                .map(|r| r.members.into_iter().map(|m| m.jid).collect())
                .unwrap_or_default();
            let new: BTreeSet<String> = room.members.iter().map(|m| m.jid.clone()).collect();
            let json = serde_json::to_vec(&room).map_err(e)?;
            let mut batch = sled::Batch::default();
            batch.insert(record_key(&room.jid), json);
            for gone in old.difference(&new) {
                batch.remove(member_key(gone, &room.jid));
            }
            for came in new.difference(&old) {
                batch.insert(member_key(came, &room.jid), &[][..]);
            }
            self.rooms.apply_batch(batch).map_err(e)?;
            self.commit().await
        })
    }

    fn delete_room<'a>(&'a self, room: &'a BareJid) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let name = room.as_str();
            // The archive first: a crash before the record goes leaves a
            // room to delete again, never a record without its messages
            // whose name a new room would take.
            self.remove_archive_view(room).await?;
            let mut batch = sled::Batch::default();
            if let Some(r) = self.read_room(name)? {
                for m in &r.members {
                    batch.remove(member_key(&m.jid, name));
                }
            }
            for k in self.rooms.scan_prefix(view_prefix(name)).keys() {
                batch.remove(k.map_err(e)?);
            }
            batch.remove(record_key(name));
            self.rooms.apply_batch(batch).map_err(e)?;
            self.commit().await
        })
    }

    fn rooms_of<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let prefix = member_prefix(user.as_str());
            let mut out = Vec::new();
            for k in self.rooms.scan_prefix(&prefix).keys() {
                let k = k.map_err(e)?;
                if let Some(rest) = k.get(prefix.len()..) {
                    out.push(String::from_utf8_lossy(rest).into_owned());
                }
            }
            Ok(out)
        })
    }

    fn view<'a>(
        &'a self,
        room: &'a BareJid,
        member: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<ViewMask>> {
        Box::pin(async move {
            Ok(self
                .rooms
                .get(view_key(room.as_str(), member.as_str()))
                .map_err(e)?
                .and_then(|v| ViewMask::decode(&v))
                .unwrap_or_default())
        })
    }

    fn put_view<'a>(
        &'a self,
        room: &'a BareJid,
        member: &'a BareJid,
        view: ViewMask,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let k = view_key(room.as_str(), member.as_str());
            if view.is_empty() {
                self.rooms.remove(k).map_err(e)?;
            } else {
                self.rooms.insert(k, view.encode()).map_err(e)?;
            }
            self.commit().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ArchiveQuery, ArchiveStore, ArchiveWrite, RoomMember};

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    fn record(room: &str, members: &[&str]) -> RoomRecord {
        RoomRecord {
            jid: room.into(),
            name: "Team".into(),
            members: members
                .iter()
                .map(|m| RoomMember {
                    jid: m.to_string(),
                    nick: None,
                })
                .collect(),
            salt: "s".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn rooms_index_views_and_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let room = jid("team@rooms.example.com");
        let (a, b, c) = (
            jid("a@example.com"),
            jid("b@example.com"),
            jid("c@example.com"),
        );
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.put_room(record(room.as_str(), &["a@example.com", "b@example.com"]))
                .await
                .unwrap();
            assert_eq!(s.rooms_of(&a).await.unwrap(), vec![room.to_string()]);
            s.put_room(record(room.as_str(), &["b@example.com", "c@example.com"]))
                .await
                .unwrap();
            assert!(s.rooms_of(&a).await.unwrap().is_empty());
            assert_eq!(s.rooms_of(&c).await.unwrap(), vec![room.to_string()]);
            let mut ids = Vec::new();
            for n in 0..4 {
                let id = s.next_id();
                ids.push(id);
                s.append(ArchiveWrite {
                    id,
                    pair: (room.clone(), room.clone()),
                    owners: vec![room.clone()],
                    from: format!("{room}/b"),
                    to: room.to_string(),
                    xml: format!("<message xmlns='jabber:client'><body>{n}</body></message>"),
                })
                .await
                .unwrap();
            }
            s.sync().await.unwrap();
            let mut v = ViewMask::default();
            v.clear_to(ids[0]);
            v.hide(&[ids[2]]);
            s.put_view(&room, &b, v.clone()).await.unwrap();
            assert_eq!(s.view(&room, &b).await.unwrap(), v);
            assert!(s.view(&room, &c).await.unwrap().is_empty());
            let page = s
                .query(ArchiveQuery {
                    user: Some(room.clone()),
                    max: 10,
                    mask: Some(std::sync::Arc::new(v)),
                    ..Default::default()
                })
                .await
                .unwrap();
            let got: Vec<u64> = page.items.iter().map(|m| m.id).collect();
            assert_eq!(got, vec![ids[1], ids[3]]);
            assert_eq!(page.count, 2);
        }
        // Everything survives a restart; then the room goes.
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.room(&room).await.unwrap().unwrap().members.len(),
            2,
            "the record survives"
        );
        assert!(!s.view(&room, &b).await.unwrap().is_empty());
        s.delete_room(&room).await.unwrap();
        assert!(s.room(&room).await.unwrap().is_none());
        assert!(s.rooms_of(&b).await.unwrap().is_empty());
        assert!(s.view(&room, &b).await.unwrap().is_empty());
        let page = s
            .query(ArchiveQuery {
                user: Some(room.clone()),
                max: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.count, 0, "the archive went with the room");
    }
}
