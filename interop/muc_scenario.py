#!/usr/bin/python3
"""muc_scenario.py - group chat (XEP-0045) on rooms.DOMAIN, seen by slixmpp.

slixmpp's own XEP-0045 and XEP-0313 code against a running Confab: a room
is created, gets a member and a name, archives what is said, counts it
unread in the inbox (XEP-0430) of a member who is not in the room, and
shows everyone's real JID. The users (--user1, --user2, default muc-alice
and muc-bob, called alice and bob below) must be fresh accounts, created
with `confab user add` as run.sh does: the scenario reads the room's whole
archive and bob's whole inbox. Steps, each with a timeout:

  1. alice and bob log in; the server's disco#items lists rooms.DOMAIN,
     whose disco#info has the identity category 'conference' and the
     feature http://jabber.org/protocol/muc
  2. alice creates interop@rooms.DOMAIN by joining it (xep_0045
     join_muc_wait): her self-presence has status codes 110, 100, 170 and
     201 and an item affiliation='member' role='participant' with her full
     JID, and the (empty) subject comes last
  3. alice makes bob a member (xep_0045 set_affiliation): she, in the room,
     is told; the room's member list (muc#admin) is alice and bob; the
     server published the room to bob's PEP bookmarks (XEP-0402,
     urn:xmpp:bookmarks:1, item id the room's JID): bob's client, whose
     entity caps (xep_0115) carry urn:xmpp:bookmarks:1+notify (xep_0163
     add_interest before his initial presence), gets the notification
     (pubsub_publish); alice's and bob's own nodes (xep_0060 get_items)
     hold the room's conference with autojoin true
  4. alice renames the room "Interop Room" through the configuration form
     (xep_0045 get_room_config / set_room_config): she gets status 104;
     the room's disco#info shows the name in its identity and in its
     muc#roominfo form (1 occupant, 2 members); both get a bookmark
     notification with the new name, and both bookmarks carry it
  5. alice sends 3 groupchat messages: each is reflected to her from
     interop@rooms.DOMAIN/alice with its id and one stanza-id by the room;
     bob, a member who never joined, gets none of them
  6. bob reads the room's archive (xep_0313 retrieve, jid=the room): the 3
     messages in order, from the room, their result ids the stanza-ids of
     step 5; bob's inbox has one entry, the room's, unread='3',
     name='Interop Room', with the third message as its last
  7. bob joins (history maxstanzas 0): he sees alice with her full JID;
     alice sees his presence with his full JID (the room is
     non-anonymous); bob's groupchat message reaches alice from
     interop@rooms.DOMAIN/bob, with a stanza-id by the room
  8. errors: making bob an outcast, or an admin, gets not-allowed (every
     member is equal); the member list is unchanged
  9. a bookmark a client keeps itself, the XEP-0402 way: alice publishes
     one for other@rooms.DOMAIN (the xep_0402 Conference stanza, through
     xep_0223 with the publish-options persist_items, max_items=max,
     send_last_published_item=never, access_model=whitelist); her client
     is notified, reads it back by id (xep_0223 retrieve) as published,
     and her node holds exactly the two bookmarks
 10. bob leaves (a muc#admin set of his own affiliation to 'none'): his
     client is notified of the retraction of the room's bookmark, his
     node no longer has it; the members are alice alone, whose two
     bookmarks are unchanged

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every step passed, 1 otherwise. Run it with /usr/bin/python3
(Debian's python3-slixmpp).
"""
import asyncio
import contextlib
import sys
import types
import uuid

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout, PresenceError
from slixmpp.plugins import base as plugin_base
from slixmpp.plugins.xep_0060.stanza import EventItem, Item
from slixmpp.xmlstream import ET, ElementBase, register_stanza_plugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from c2s_scenario import STEP_TIMEOUT, Client, cli, disconnect_all
from history_scenario import iq_ok, quiet, watch

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_INBOX = "urn:xmpp:inbox:1"
NS_MAM = "urn:xmpp:mam:2"
NS_FWD = "urn:xmpp:forward:0"
NS_CLIENT = "jabber:client"
NS_SID = "urn:xmpp:sid:0"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NAME = "Interop Room"

try:  # slixmpp 1.8.4 and later have XEP-0402 (PEP native bookmarks)
    from slixmpp.plugins.xep_0402 import stanza as bookmarks_stanza
except ImportError:
    # Debian's 1.8.3 does not: the same plugin as upstream's (the
    # <conference/> stanza on pubsub items), registered under its name.
    class _Conference(ElementBase):
        namespace = NS_BOOKMARKS
        name = "conference"
        plugin_attrib = "conference"
        interfaces = {"name", "autojoin", "nick"}
        sub_interfaces = {"nick"}

        def set_autojoin(self, v):
            self._set_attr("autojoin", "true" if v else "false")

        def get_autojoin(self):
            v = self._get_attr("autojoin", "")
            return v == "1" or v.lower() == "true"

    def _register_conference():
        register_stanza_plugin(Item, _Conference)
        register_stanza_plugin(EventItem, _Conference)

    bookmarks_stanza = types.SimpleNamespace(NS=NS_BOOKMARKS, Conference=_Conference,
                                             register_plugin=_register_conference)

    class XEP_0402(plugin_base.BasePlugin):
        """XEP-0402: PEP Native Bookmarks"""
        name = "xep_0402"
        description = "XEP-0402: PEP Native Bookmarks"
        dependencies = {"xep_0060"}
        stanza = bookmarks_stanza

        def plugin_init(self):
            self.stanza.register_plugin()

    plugin_base.register_plugin(XEP_0402)
Conference = bookmarks_stanza.Conference


class MucClient(Client):
    """c2s_scenario's client with slixmpp's MUC, MAM, PEP and bookmarks
    plugins."""

    def __init__(self, jid, password, cafile):
        super().__init__(jid, password, cafile)
        for p in ("xep_0045", "xep_0297", "xep_0313", "xep_0359", "xep_0004", "xep_0060",
                  "xep_0115", "xep_0163", "xep_0223", "xep_0402"):
            self.register_plugin(p)
        # PEP notifications (no body): into c.inbox, for c.expect.
        self.add_event_handler("pubsub_publish", self.inbox.put_nowait)
        self.add_event_handler("pubsub_retract", self.inbox.put_nowait)

        # slixmpp's "message" event is for messages with a body: the room's
        # notices (affiliation changes, status 104) go to c.inbox here.
        def notice(msg):
            if not msg["body"]:
                self.inbox.put_nowait(msg)
        self.register_handler(Callback("muc notice", MatchXPath(
            "{%s}message/{%s}x" % (NS_CLIENT, NS_MUC_USER)), notice))
        # Nor does its "presence" event report an occupant's presence once
        # the room's bare JID is in the roster (xep_0045 sets ignore_updates).
        self.add_event_handler("groupchat_presence", self.inbox.put_nowait)

    async def _on_start(self, event):
        # Interest in bookmark notifications (disco feature
        # urn:xmpp:bookmarks:1+notify), in the entity caps of the initial
        # presence that Client._on_start sends. slixmpp keys its disco info
        # by boundjid.full, so this is done once the resource is bound (done
        # in __init__ it would be filed under the bare JID and never shown),
        # and the caps are recomputed, awaited, before that presence goes.
        self.plugin["xep_0163"].add_interest(NS_BOOKMARKS)
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        await super()._on_start(event)


async def login(args, user):
    c = MucClient("%s@%s" % (user, args.domain), args.password, args.cafile)
    c.connect(address=(args.server, args.port), force_starttls=True)
    await asyncio.wait_for(c.started, STEP_TIMEOUT)
    watch(c)  # c.entries: inbox query entries
    return c


async def join(c, room, nick):
    """Join with xep_0045's join_muc_wait, no history: (self-presence,
    subject message, occupants' presences)."""
    try:
        # join_muc_wait prints (to stdout) the delay of every groupchat
        # message that arrives while it waits: keep the JSON clean.
        with contextlib.redirect_stdout(sys.stderr):
            pres, subject, occupants, _history = await c.plugin["xep_0045"].join_muc_wait(
                JID(room), nick, maxstanzas=0, timeout=STEP_TIMEOUT)
    except PresenceError as e:
        raise RuntimeError("%s: joining %s refused: %s" % (c.boundjid, room, e.presence))
    except asyncio.TimeoutError:
        raise RuntimeError("%s: no self-presence and subject from %s within %.0f s"
                           % (c.boundjid, room, STEP_TIMEOUT))
    return pres, subject, occupants


def user_item(st):
    """The attributes of the <x muc#user><item/> of a stanza ({} if none)."""
    it = st.xml.find("{%s}x/{%s}item" % (NS_MUC_USER, NS_MUC_USER))
    return dict(it.attrib) if it is not None else {}


def status_codes(st):
    return {s.get("code") for s in st.xml.findall("{%s}x/{%s}status" % (NS_MUC_USER, NS_MUC_USER))}


def stanza_ids(xml, by):
    return [e.get("id") for e in xml.findall("{%s}stanza-id" % NS_SID) if e.get("by") == by]


def groupchat_from(occupant, body):
    def pred(st):
        return (st.name == "message" and st["type"] == "groupchat"
                and str(st["from"]) == occupant and st["body"] == body)
    return pred


def occupant_presence(occupant):
    def pred(st):
        return (st.name == "presence" and str(st["from"]) == occupant
                and st["type"] not in ("unavailable", "error"))
    return pred


def from_room(room):
    """Anything the room, or one of its occupants, sends with a body."""
    def pred(st):
        return st.name == "message" and st["from"].bare == room and bool(st["body"])
    return pred


async def refused(c, what, condition, coro):
    try:
        res = await coro
    except IqError as e:
        if e.condition != condition:
            raise RuntimeError("%s: %s got %s (%s), not %s"
                               % (c.boundjid, what, e.condition, e.text or "", condition))
        return
    except IqTimeout:
        raise RuntimeError("%s: no answer to %s within %.0f s" % (c.boundjid, what, STEP_TIMEOUT))
    raise RuntimeError("%s: %s succeeded (%s), expected %s" % (c.boundjid, what, res, condition))


async def members(c, room):
    try:
        got = await c.plugin["xep_0045"].get_affiliation_list(JID(room), "member",
                                                              timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("%s: the member list of %s: %r" % (c.boundjid, room, e))
    return sorted(str(j) for j in got)


def form_values(xml, form_type):
    """{var: value} of the data form of this FORM_TYPE among xml's children."""
    for x in xml.findall("{%s}x" % NS_DATA):
        vals = {}
        for f in x.findall("{%s}field" % NS_DATA):
            v = f.find("{%s}value" % NS_DATA)
            vals[f.get("var")] = (v.text or "") if v is not None else ""
        if vals.get("FORM_TYPE") == form_type:
            return vals
    return None


async def disco_info(c, jid):
    try:
        iq = await c.plugin["xep_0030"].get_info(jid=jid, timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("%s: disco#info of %s: %r" % (c.boundjid, jid, e))
    return iq.xml.find("{%s}query" % NS_INFO)


def conference(el):
    """A <conference xmlns='urn:xmpp:bookmarks:1'/> through xep_0402's
    stanza: {name, autojoin, nick}; None if el is None."""
    if el is None:
        return None
    c = Conference(xml=el)
    return {"name": c["name"], "autojoin": c["autojoin"], "nick": c["nick"]}


async def bookmarks(c, item_ids=None, missing_ok=False):
    """c's own bookmarks (xep_0060 get_items on its account's
    urn:xmpp:bookmarks:1 node): {item id: conference(...)}. missing_ok: a
    node that does not exist (item-not-found) has none."""
    what = "%s: its bookmarks (get_items %s%s)" % (
        c.boundjid, NS_BOOKMARKS, " ids %s" % item_ids if item_ids else "")
    try:
        iq = await asyncio.wait_for(c.plugin["xep_0060"].get_items(
            None, NS_BOOKMARKS, item_ids=item_ids, timeout=STEP_TIMEOUT), STEP_TIMEOUT + 1)
    except IqError as e:
        if missing_ok and e.condition == "item-not-found":
            return {}
        raise RuntimeError("%s got %s %s" % (what, e.condition, e.text or ""))
    except (IqTimeout, asyncio.TimeoutError):
        raise RuntimeError("%s: no answer within %.0f s" % (what, STEP_TIMEOUT))
    items = iq.xml.find("{%s}pubsub/{%s}items" % (NS_PUBSUB, NS_PUBSUB))
    if items is None or items.get("node") != NS_BOOKMARKS:
        raise RuntimeError("%s: no <items node='%s'/> in %s" % (what, NS_BOOKMARKS, iq))
    out = {}
    for it in items.findall("{%s}item" % NS_PUBSUB):
        conf = conference(it.find("{%s}conference" % NS_BOOKMARKS))
        if conf is None:
            raise RuntimeError("%s: item %r holds no conference: %s"
                               % (what, it.get("id"), ET.tostring(it).decode()))
        out[it.get("id")] = conf
    return out


def bookmark_event(own_bare, item_id, retract=False, **want):
    """A PEP notification (headline from own_bare, node urn:xmpp:bookmarks:1)
    of the publication of item_id, with a conference whose fields include
    `want`; or of its retraction."""
    def pred(st):
        if (st.name != "message" or st["type"] != "headline"
                or str(st["from"]) != own_bare):
            return False
        items = st.xml.find("{%s}event/{%s}items" % (NS_PUBSUB_EVENT, NS_PUBSUB_EVENT))
        if items is None or items.get("node") != NS_BOOKMARKS:
            return False
        for child in items:
            if child.get("id") != item_id:
                continue
            if retract:
                if child.tag == "{%s}retract" % NS_PUBSUB_EVENT:
                    return True
                continue
            if child.tag != "{%s}item" % NS_PUBSUB_EVENT:
                continue
            conf = conference(child.find("{%s}conference" % NS_BOOKMARKS))
            if conf is not None and all(conf.get(k) == v for k, v in want.items()):
                return True
        return False
    return pred


async def expect_bookmark(c, what, pred):
    """c.expect, the bookmark notifications seen meanwhile in the error."""
    try:
        return await c.expect(what, pred)
    except RuntimeError as e:
        seen = [ET.tostring(st.xml).decode() for st in c.kept
                if st.name == "message" and st.xml.find("{%s}event" % NS_PUBSUB_EVENT) is not None]
        raise RuntimeError("%s; the PEP notifications it got: %s" % (e, seen or "none"))


async def publish_bookmark(c, room, **conf):
    """Publish a bookmark the XEP-0402 way: xep_0402's Conference, item id
    the room's JID, through xep_0223 (persist_items, access_model
    whitelist) with the other publish-options XEP-0402 asks for."""
    bm = Conference()
    for k, v in conf.items():
        bm[k] = v
    opts = c.plugin["xep_0004"].stanza.Form()
    opts["type"] = "submit"
    opts.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS)
    opts.add_field(var="pubsub#max_items", value="max")
    opts.add_field(var="pubsub#send_last_published_item", value="never")
    try:
        await asyncio.wait_for(c.plugin["xep_0223"].store(
            bm, node=NS_BOOKMARKS, id=room, options=opts, timeout=STEP_TIMEOUT),
            STEP_TIMEOUT + 1)
    except IqError as e:
        raise RuntimeError("%s: publishing its bookmark of %s got %s %s"
                           % (c.boundjid, room, e.condition, e.text or ""))
    except (IqTimeout, asyncio.TimeoutError):
        raise RuntimeError("%s: no answer to publishing its bookmark of %s within %.0f s"
                           % (c.boundjid, room, STEP_TIMEOUT))


async def scenario(args, steps):
    d = args.domain
    service = args.rooms or "rooms." + d
    room = "interop@" + service
    a_bare = "%s@%s" % (args.user1, d)
    b_bare = "%s@%s" % (args.user2, d)
    a_nick, b_nick = "alice", "bob"
    a_occ, b_occ = room + "/" + a_nick, room + "/" + b_nick
    run = uuid.uuid4().hex[:8]

    # 1 -------------------------------------------------------------------
    alice = await login(args, args.user1)
    bob = await login(args, args.user2)
    try:
        iq = await alice.plugin["xep_0030"].get_items(jid=d, timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("disco#items of %s: %r" % (d, e))
    items = [i.get("jid") for i in iq.xml.findall("{%s}query/{%s}item" % (NS_ITEMS, NS_ITEMS))]
    if service not in items:
        raise RuntimeError("%s not among the disco#items of %s: %s" % (service, d, items))
    q = await disco_info(alice, service)
    idents = [(i.get("category"), i.get("type")) for i in q.findall("{%s}identity" % NS_INFO)]
    feats = [f.get("var") for f in q.findall("{%s}feature" % NS_INFO)]
    if not any(cat == "conference" for cat, _ in idents) or NS_MUC not in feats:
        raise RuntimeError("disco#info of %s: identities %s, features %s" % (service, idents, feats))
    steps.append("1 %s and %s logged in; %s listed by %s, identity %s, feature %s"
                 % (alice.boundjid, bob.boundjid, service, d, idents, NS_MUC))

    # 2 -------------------------------------------------------------------
    pres, subject, _ = await join(alice, room, a_nick)
    codes = status_codes(pres)
    want = {"110", "100", "170", "201"}
    if not want <= codes:
        raise RuntimeError("alice's self-presence from %s: status codes %s, expected %s: %s"
                           % (room, sorted(codes), sorted(want), pres))
    item = user_item(pres)
    if (str(pres["from"]) != a_occ or item.get("jid") != str(alice.boundjid)
            or item.get("affiliation") != "member" or item.get("role") != "participant"):
        raise RuntimeError("alice's self-presence: from %s, item %s" % (pres["from"], item))
    if str(subject["from"].bare) != room:
        raise RuntimeError("the subject came from %s: %s" % (subject["from"], subject))
    steps.append("2 alice created %s: self-presence codes %s, item %s; subject %r"
                 % (room, sorted(codes), item, subject["subject"]))

    # 3 -------------------------------------------------------------------
    try:
        await alice.plugin["xep_0045"].set_affiliation(JID(room), "member", jid=JID(b_bare),
                                                       timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("alice making bob a member: %r" % e)

    def told(st):
        return (st.name == "message" and str(st["from"]) == room
                and user_item(st).get("jid") == b_bare
                and user_item(st).get("affiliation") == "member")
    await alice.expect("the room telling of bob's membership", told)
    got = await members(alice, room)
    if got != sorted([a_bare, b_bare]):
        raise RuntimeError("the members of %s: %s" % (room, got))
    await expect_bookmark(bob, "the notification of his bookmark of %s" % room,
                          bookmark_event(b_bare, room, autojoin=True))
    marks = {}
    for who, c in (("alice", alice), ("bob", bob)):
        marks[who] = (await bookmarks(c)).get(room)
        if marks[who] is None or marks[who]["autojoin"] is not True:
            raise RuntimeError("%s's bookmark of %s: %s, expected a conference with autojoin true"
                               % (who, room, marks[who]))
    steps.append("3 bob is a member (set_affiliation); alice told; members %s; bob notified of "
                 "his bookmark; bookmarks %s" % (got, marks))

    # 4 -------------------------------------------------------------------
    muc = alice.plugin["xep_0045"]
    try:
        form = await muc.get_room_config(JID(room), timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout, ValueError) as e:
        raise RuntimeError("alice getting the room's configuration form: %r" % e)
    fields = form.get_fields()
    if "muc#roomconfig_roomname" not in fields:
        raise RuntimeError("the configuration form has no muc#roomconfig_roomname: %s" % form)
    form_type = fields["FORM_TYPE"]["value"] if "FORM_TYPE" in fields else None
    if isinstance(form_type, list):  # slixmpp reads a hidden field as a list
        form_type = form_type[0] if len(form_type) == 1 else form_type
    if form_type != "http://jabber.org/protocol/muc#roomconfig":
        raise RuntimeError("the configuration form's FORM_TYPE: %s" % form)
    fields["muc#roomconfig_roomname"]["value"] = NAME
    try:
        await muc.set_room_config(JID(room), form, timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("alice submitting the configuration form: %r" % e)

    def changed(st):
        return (st.name == "message" and str(st["from"]) == room
                and "104" in status_codes(st))
    await alice.expect("status 104 after the configuration change", changed)
    q = await disco_info(alice, room)
    names = [i.get("name") for i in q.findall("{%s}identity" % NS_INFO)
             if i.get("category") == "conference"]
    info = form_values(q, ROOMINFO)
    if names != [NAME]:
        raise RuntimeError("the room's conference identities are named %s, not %r" % (names, NAME))
    if info is None:
        raise RuntimeError("the room's disco#info has no %s form: %s" % (ROOMINFO, ET.tostring(q)))
    shown = {k: info.get(k) for k in ("muc#roomconfig_roomname", "muc#roominfo_occupants",
                                      "muc#roominfo_members")}
    if shown != {"muc#roomconfig_roomname": NAME, "muc#roominfo_occupants": "1",
                 "muc#roominfo_members": "2"}:
        raise RuntimeError("the room's muc#roominfo form: %s" % shown)
    feats = [f.get("var") for f in q.findall("{%s}feature" % NS_INFO)]
    missing = [f for f in (NS_MUC, "muc_persistent", "muc_membersonly", "muc_nonanonymous",
                           NS_MAM) if f not in feats]
    if missing:
        raise RuntimeError("the room's disco#info lacks %s" % missing)
    marks = {}
    for who, c, bare in (("alice", alice, a_bare), ("bob", bob, b_bare)):
        await expect_bookmark(c, "the notification of the bookmark of %s renamed %r"
                              % (room, NAME), bookmark_event(bare, room, name=NAME, autojoin=True))
        marks[who] = (await bookmarks(c)).get(room)
        if marks[who] is None or marks[who]["name"] != NAME or marks[who]["autojoin"] is not True:
            raise RuntimeError("%s's bookmark of %s after the rename: %s, expected name %r, "
                               "autojoin true" % (who, room, marks[who], NAME))
    steps.append("4 renamed %r (status 104); disco#info: identity name %r, roominfo %s; both "
                 "notified, bookmarks %s" % (NAME, names[0], shown, marks))

    # 5 -------------------------------------------------------------------
    sent = []  # (id, body)
    for i in range(1, 4):
        mid, body = "%s-%d" % (run, i), "room %s message %d" % (run, i)
        m = alice.make_message(mto=room, mbody=body, mtype="groupchat")
        m["id"] = mid
        m.send()
        sent.append((mid, body))
    sid = []
    for mid, body in sent:
        got = await alice.expect("the reflection of %r" % body, groupchat_from(a_occ, body))
        ids = stanza_ids(got.xml, room)
        if got["id"] != mid:
            raise RuntimeError("reflection of %r with id %r, not %r" % (body, got["id"], mid))
        if len(ids) != 1 or not ids[0]:
            raise RuntimeError("reflection of %r with stanza-ids by the room %s: %s"
                               % (body, ids, got))
        sid.append(ids[0])
    await quiet(bob, from_room(room), 1.0, "a room message though he never joined")
    steps.append("5 alice's 3 messages reflected with their ids and stanza-ids %s; bob got none"
                 % sid)

    # 6 -------------------------------------------------------------------
    try:
        iq = await bob.plugin["xep_0313"].retrieve(jid=JID(room), timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("bob's MAM query to %s: %r" % (room, e))
    fin = iq.xml.find("{%s}fin" % NS_MAM)
    if fin is None or fin.get("complete") not in ("true", "1"):
        raise RuntimeError("bob's MAM of %s: no complete <fin/>: %s" % (room, iq))
    archived = []  # (result id, from, body)
    for r in iq["mam"]["results"]:
        if str(r["from"]) != room:
            raise RuntimeError("a MAM result from %s, not the room: %s" % (r["from"], r))
        res = r.xml.find("{%s}result" % NS_MAM)
        inner = res.find("{%s}forwarded/{%s}message" % (NS_FWD, NS_CLIENT))
        if inner is None:
            raise RuntimeError("a MAM result without a forwarded message: %s" % r)
        b = inner.find("{%s}body" % NS_CLIENT)
        archived.append((res.get("id"), inner.get("from"), b.text if b is not None else None))
    want = [(i, a_occ, body) for i, (_, body) in zip(sid, sent)]
    if archived != want:
        raise RuntimeError("bob's MAM of %s: %s, expected %s" % (room, archived, want))

    qid = "ib-" + run
    bob.entries.clear()
    res = await iq_ok(bob, "get", ET.Element("{%s}inbox" % NS_INBOX, {"queryid": qid}),
                      "the inbox query")
    if len(bob.entries) != 1:
        raise RuntimeError("bob's inbox: %d entries, expected the room's: %s"
                           % (len(bob.entries), [str(e) for e in bob.entries]))
    e = bob.entries[0].xml.find("{%s}entry" % NS_INBOX)
    attrs = {k: e.get(k) for k in ("jid", "unread", "name", "id")}
    if attrs != {"jid": room, "unread": "3", "name": NAME, "id": sid[2]}:
        raise RuntimeError("bob's inbox entry %s, expected jid=%s unread=3 name=%r id=%s"
                           % (dict(e.attrib), room, NAME, sid[2]))
    r = bob.entries[0].xml.find("{%s}result" % NS_MAM)
    inner = None if r is None else r.find("{%s}forwarded/{%s}message" % (NS_FWD, NS_CLIENT))
    last = None if inner is None else inner.find("{%s}body" % NS_CLIENT)
    if last is None or last.text != sent[2][1] or r.get("id") != sid[2]:
        raise RuntimeError("bob's inbox entry without the room's last message: %s"
                           % bob.entries[0])
    fin = res.xml.find("{%s}fin" % NS_INBOX)
    counts = None if fin is None else {k: fin.get(k) for k in ("total", "unread", "all-unread")}
    if counts != {"total": "1", "unread": "1", "all-unread": "3"}:
        raise RuntimeError("bob's inbox <fin/> %s, expected total=1 unread=1 all-unread=3"
                           % counts)
    steps.append("6 bob's MAM of the room: the 3 messages, ids %s; his inbox: %s with the last one"
                 % ([i for i, _, _ in archived], attrs))

    # 7 -------------------------------------------------------------------
    pres, _, occupants = await join(bob, room, b_nick)
    if "110" not in status_codes(pres) or "201" in status_codes(pres):
        raise RuntimeError("bob's self-presence: status codes %s" % sorted(status_codes(pres)))
    seen = {str(p["from"]): user_item(p).get("jid") for p in occupants}
    if seen.get(a_occ) != str(alice.boundjid):
        raise RuntimeError("bob sees the occupants %s; alice not as %s" % (seen, alice.boundjid))
    got = await alice.expect("bob's presence in the room", occupant_presence(b_occ))
    item = user_item(got)
    if item.get("jid") != str(bob.boundjid):
        raise RuntimeError("bob's presence reached alice with item %s, not jid=%s"
                           % (item, bob.boundjid))
    body = "room %s from bob" % run
    bob.send_message(mto=room, mbody=body, mtype="groupchat")
    got = await alice.expect("bob's message", groupchat_from(b_occ, body))
    ids = stanza_ids(got.xml, room)
    if len(ids) != 1 or ids[0] in sid:
        raise RuntimeError("bob's message reached alice with stanza-ids by the room %s" % ids)
    await bob.expect("the reflection of bob's message", groupchat_from(b_occ, body))
    steps.append("7 bob joined: he sees alice as %s, she sees him as %s; his message reached her "
                 "from %s" % (seen[a_occ], item["jid"], got["from"]))

    # 8 -------------------------------------------------------------------
    muc_b = bob.plugin["xep_0045"]
    for aff in ("outcast", "admin"):
        await refused(alice, "making bob %s" % aff, "not-allowed",
                      muc.set_affiliation(JID(room), aff, jid=JID(b_bare), timeout=STEP_TIMEOUT))
    got = await members(bob, room)
    if got != sorted([a_bare, b_bare]):
        raise RuntimeError("the members of %s after the refused changes: %s" % (room, got))
    steps.append("8 errors: outcast and admin not-allowed; members still %s" % got)

    # 9 -------------------------------------------------------------------
    other = "other@" + service
    mine = {"name": "Other Room", "autojoin": False, "nick": "alice-" + run}
    await publish_bookmark(alice, other, **mine)
    await expect_bookmark(alice, "the notification of her own bookmark of %s" % other,
                          bookmark_event(a_bare, other, **mine))
    try:
        iq = await asyncio.wait_for(alice.plugin["xep_0223"].retrieve(
            NS_BOOKMARKS, id=other, timeout=STEP_TIMEOUT), STEP_TIMEOUT + 1)
    except IqError as e:
        raise RuntimeError("alice reading back her bookmark of %s got %s %s"
                           % (other, e.condition, e.text or ""))
    except (IqTimeout, asyncio.TimeoutError):
        raise RuntimeError("alice reading back her bookmark of %s: no answer" % other)
    back = [(i["id"], conference(i.xml.find("{%s}conference" % NS_BOOKMARKS)))
            for i in iq["pubsub"]["items"]]
    if back != [(other, mine)]:
        raise RuntimeError("alice's bookmark of %s read back as %s, published %s"
                           % (other, back, mine))
    a_marks = await bookmarks(alice)
    if sorted(a_marks) != sorted([room, other]):
        raise RuntimeError("alice's bookmarks: %s, expected %s and %s" % (a_marks, room, other))
    steps.append("9 alice published her bookmark of %s (xep_0402 through xep_0223), was "
                 "notified, read it back %s; her bookmarks %s" % (other, back[0][1], sorted(a_marks)))

    # 10 ------------------------------------------------------------------
    try:
        await muc_b.set_affiliation(JID(room), "none", jid=JID(b_bare), timeout=STEP_TIMEOUT)
    except (IqError, IqTimeout) as e:
        raise RuntimeError("bob leaving %s (his own affiliation set to none): %r" % (room, e))
    await expect_bookmark(bob, "the retraction of his bookmark of %s" % room,
                          bookmark_event(b_bare, room, retract=True))
    b_marks = await bookmarks(bob, missing_ok=True)
    if room in b_marks:
        raise RuntimeError("bob left %s, his bookmarks still have it: %s" % (room, b_marks))
    got = await members(alice, room)
    if got != [a_bare]:
        raise RuntimeError("the members of %s after bob left: %s" % (room, got))
    after = await bookmarks(alice)
    if after != a_marks:
        raise RuntimeError("alice's bookmarks changed when bob left: %s, were %s"
                           % (after, a_marks))
    steps.append("10 bob left (affiliation none): notified of the retraction, his bookmarks %s; "
                 "members %s; alice's bookmarks unchanged" % (sorted(b_marks), got))

    await disconnect_all([alice, bob])


def users(p):
    p.add_argument("--user1", default="muc-alice", help="alice: fresh account, creates the room")
    p.add_argument("--user2", default="muc-bob", help="bob: fresh account, made a member")
    p.add_argument("--rooms", help="the group-chat service (default rooms.DOMAIN)")


if __name__ == "__main__":
    cli(__doc__, scenario, users)
