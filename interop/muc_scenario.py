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
     is told; the room's member list (muc#admin) is alice and bob
  4. alice renames the room "Interop Room" through the configuration form
     (xep_0045 get_room_config / set_room_config): she gets status 104;
     the room's disco#info shows the name in its identity and in its
     muc#roominfo form (1 occupant, 2 members)
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

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every step passed, 1 otherwise. Run it with /usr/bin/python3
(Debian's python3-slixmpp).
"""
import asyncio
import contextlib
import sys
import uuid

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout, PresenceError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from c2s_scenario import STEP_TIMEOUT, Client, cli
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
NAME = "Interop Room"


class MucClient(Client):
    """c2s_scenario's client with slixmpp's MUC and MAM plugins."""

    def __init__(self, jid, password, cafile):
        super().__init__(jid, password, cafile)
        for p in ("xep_0045", "xep_0297", "xep_0313", "xep_0359"):
            self.register_plugin(p)

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
    steps.append("3 bob is a member (set_affiliation); alice told; members %s" % got)

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
    steps.append("4 renamed %r (status 104); disco#info: identity name %r, roominfo %s"
                 % (NAME, names[0], shown))

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
    for aff in ("outcast", "admin"):
        await refused(alice, "making bob %s" % aff, "not-allowed",
                      muc.set_affiliation(JID(room), aff, jid=JID(b_bare), timeout=STEP_TIMEOUT))
    got = await members(bob, room)
    if got != sorted([a_bare, b_bare]):
        raise RuntimeError("the members of %s after the refused changes: %s" % (room, got))
    steps.append("8 errors: outcast and admin not-allowed; members still %s" % got)

    for c in (alice, bob):
        c.disconnect()
        try:
            await asyncio.wait_for(c.disconnected, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError("%s: did not disconnect within %.0f s" % (c.boundjid, STEP_TIMEOUT))


def users(p):
    p.add_argument("--user1", default="muc-alice", help="alice: fresh account, creates the room")
    p.add_argument("--user2", default="muc-bob", help="bob: fresh account, made a member")
    p.add_argument("--rooms", help="the group-chat service (default rooms.DOMAIN)")


if __name__ == "__main__":
    cli(__doc__, scenario, users)
