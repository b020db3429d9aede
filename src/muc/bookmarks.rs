//! Every member has a bookmark of each of their rooms (XEP-0402, with
//! autojoin), so that a standard client shows the room after login: added
//! when they create, join or are added, renamed with the room, removed
//! when they leave or are removed.

use std::sync::Arc;

use crate::modules::{Event, Listener};
use crate::server::Ctx;
use crate::store::BoxFuture;

pub struct Bookmarks;

impl Listener for Bookmarks {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Event::Membership {
                room,
                user,
                name,
                nick,
                joined,
            } = ev
            else {
                return;
            };
            let Some(pep) = ctx.registry.pep() else {
                return;
            };
            if let Err(e) =
                crate::pep::room_membership(pep.as_ref(), ctx, user, room, name, *nick, *joined)
                    .await
            {
                tracing::error!(error = %e, user = %user, room = %room, "room bookmark not written");
            }
        })
    }
}
