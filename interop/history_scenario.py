#!/usr/bin/python3
"""history_scenario.py - deleting history from one's own view, seen by slixmpp.

A client nobody here wrote deletes messages and a whole conversation from
its user's view (urn:confab:history:0, xeps/confab-history.md) and reads
its inbox (XEP-0430, xeps/xep-0430.md). The users (--user1, --user2,
default hist-alice and hist-bob, called alice and bob below) must be
fresh accounts, created with `confab user add` as run.sh does: the
scenario counts whole archives and the whole inbox. Steps, each with a
timeout:

  1. alice/pc, alice/phone and bob log in; the server's and alice's
     disco#info list urn:confab:history:0 and urn:xmpp:inbox:1
  2. bob sends alice 3 chats; alice/pc gets them, each with a stanza-id
     by alice's bare JID
  3. alice/pc sends bob a XEP-0333 displayed marker for the last one:
     bob gets it untouched; alice/phone gets the inbox push unread='0'
  4. alice/pc's MAM with bob: the 3 chats, under the stanza-ids of step 2,
     and the marker
  5. alice/pc deletes the second chat (<item id/>): an empty result;
     alice/phone gets <deleted><item id/></deleted>, alice/pc does not
  6. alice/phone's MAM with bob: chats 1 and 3 and the marker; bob's MAM
     with alice: still the 3 chats and the marker
  7. errors: the deleted id, and a request naming it with a live id, get
     item-not-found (and the live one stays); a non-numeric id gets
     item-not-found; <delete/> with neither and with both get bad-request;
     a delete addressed to bob gets forbidden
  8. alice/pc deletes the whole conversation (with=bob): alice/phone gets
     <deleted with=bob/> and the inbox push removed='true'; alice's MAM
     with bob is empty, bob's still has the 3 chats and the marker
  9. bob sends one more chat: alice's MAM with bob shows it alone; alice's
     inbox has one entry, for bob, unread='1', with that message, and
     <fin total='1' unread='1' all-unread='1'>

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every step passed, 1 otherwise. Run it with /usr/bin/python3
(Debian's python3-slixmpp).
"""
import asyncio
import uuid

from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from c2s_scenario import STEP_TIMEOUT, cli, disconnect_all, login, message_from

NS_HIST = "urn:confab:history:0"
NS_INBOX = "urn:xmpp:inbox:1"
NS_MAM = "urn:xmpp:mam:2"
NS_FWD = "urn:xmpp:forward:0"
NS_CLIENT = "jabber:client"
NS_SID = "urn:xmpp:sid:0"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_DATA = "jabber:x:data"
NS_RSM = "http://jabber.org/protocol/rsm"


def watch(c):
    """Handlers for what slixmpp's "message" event never reports (messages
    without a body): MAM results (kept per queryid in c.mam), inbox query
    entries (c.entries), and, into c.inbox for c.expect, history
    notifications, inbox pushes and chat markers."""
    c.mam = {}
    c.entries = []

    def on_result(msg):
        if msg.xml.find("{%s}entry" % NS_INBOX) is not None:
            return  # the last message of an inbox entry, taken by on_entry
        res = msg.xml.find("{%s}result" % NS_MAM)
        c.mam.setdefault(res.get("queryid"), []).append(res)

    def on_entry(msg):
        if msg["type"] == "headline":
            c.inbox.put_nowait(msg)  # a push
        else:
            c.entries.append(msg)  # an answer to an inbox query

    def path(ns, tag):
        return MatchXPath("{%s}message/{%s}%s" % (NS_CLIENT, ns, tag))

    c.register_handler(Callback("mam result", path(NS_MAM, "result"), on_result))
    c.register_handler(Callback("inbox entry", path(NS_INBOX, "entry"), on_entry))
    c.register_handler(Callback("history deleted", path(NS_HIST, "deleted"),
                                c.inbox.put_nowait))
    c.register_handler(Callback("marker", path(NS_MARKERS, "displayed"), c.inbox.put_nowait))


async def iq_ok(c, itype, payload, what, to=None):
    """Send an IQ with this ET payload; return the result, fail on an error."""
    st = c.Iq()
    st["type"] = itype
    if to is not None:
        st["to"] = to
    st.append(payload)
    try:
        return await st.send(timeout=STEP_TIMEOUT)
    except IqError as e:
        raise RuntimeError("%s: %s got error %s %s" % (c.boundjid, what, e.condition,
                                                       e.text or ""))
    except IqTimeout:
        raise RuntimeError("%s: no answer to %s within %.0f s" % (c.boundjid, what, STEP_TIMEOUT))


async def iq_error(c, itype, payload, what, condition, to=None):
    """Send an IQ that must be refused with this condition."""
    st = c.Iq()
    st["type"] = itype
    if to is not None:
        st["to"] = to
    st.append(payload)
    try:
        res = await st.send(timeout=STEP_TIMEOUT)
    except IqError as e:
        if e.condition != condition:
            raise RuntimeError("%s: %s got %s, not %s" % (c.boundjid, what, e.condition, condition))
        return
    except IqTimeout:
        raise RuntimeError("%s: no answer to %s within %.0f s" % (c.boundjid, what, STEP_TIMEOUT))
    raise RuntimeError("%s: %s succeeded (%s), expected %s" % (c.boundjid, what, res, condition))


def delete_with(jid):
    return ET.Element("{%s}delete" % NS_HIST, {"with": jid})


def delete_items(*ids):
    d = ET.Element("{%s}delete" % NS_HIST)
    for i in ids:
        ET.SubElement(d, "{%s}item" % NS_HIST, {"id": i})
    return d


async def mam(c, with_jid):
    """c's whole archive with with_jid (one page, far below max_page):
    [(archive id, forwarded <message/> element)], oldest first."""
    qid = "q-" + uuid.uuid4().hex[:10]
    q = ET.Element("{%s}query" % NS_MAM, {"queryid": qid})
    form = ET.SubElement(q, "{%s}x" % NS_DATA, {"type": "submit"})
    for var, value, ftype in (("FORM_TYPE", NS_MAM, "hidden"), ("with", with_jid, None)):
        f = ET.SubElement(form, "{%s}field" % NS_DATA, {"var": var})
        if ftype:
            f.set("type", ftype)
        ET.SubElement(f, "{%s}value" % NS_DATA).text = value
    res = await iq_ok(c, "set", q, "a MAM query with %s" % with_jid)
    fin = res.xml.find("{%s}fin" % NS_MAM)
    if fin is None:
        raise RuntimeError("%s: MAM answer without <fin/>: %s" % (c.boundjid, res))
    if fin.get("complete") not in ("true", "1"):
        raise RuntimeError("%s: MAM with %s not complete in one page: %s" % (c.boundjid, with_jid, res))
    items = []
    for r in c.mam.pop(qid, []):
        inner = r.find("{%s}forwarded/{%s}message" % (NS_FWD, NS_CLIENT))
        if inner is None or not r.get("id"):
            raise RuntimeError("%s: MAM result without id or message: %s"
                               % (c.boundjid, ET.tostring(r)))
        items.append((r.get("id"), inner))
    count = fin.find("{%s}set/{%s}count" % (NS_RSM, NS_RSM))
    if count is not None and count.text != str(len(items)):
        raise RuntimeError("%s: MAM with %s: %d results, <count>%s</count>"
                           % (c.boundjid, with_jid, len(items), count.text))
    return items


def body_of(xml):
    b = xml.find("{%s}body" % NS_CLIENT)
    return b.text if b is not None else None


def chats(items):
    """(id, body) of the results with a body, in order."""
    return [(aid, body_of(m)) for aid, m in items if body_of(m) is not None]


def markers(items):
    return [m.find("{%s}displayed" % NS_MARKERS).get("id") for _, m in items
            if m.find("{%s}displayed" % NS_MARKERS) is not None]


def describe(items):
    return [body_of(m) if body_of(m) is not None else "<marker>" for _, m in items]


async def quiet(c, pred, seconds, what):
    """Nothing matching pred arrives at c within `seconds`."""
    try:
        st = await asyncio.wait_for(c.expect("nothing", pred), seconds)
    except (asyncio.TimeoutError, RuntimeError):
        return
    raise RuntimeError("%s: got %s: %s" % (c.boundjid, what, st))


def deleted_note(own_bare, with_jid=None, ids=None):
    """A history notification from own_bare: with=with_jid, or these item ids."""
    def pred(st):
        if st.name != "message" or st["type"] != "headline" or str(st["from"]) != own_bare:
            return False
        d = st.xml.find("{%s}deleted" % NS_HIST)
        if d is None:
            return False
        if with_jid is not None:
            return d.get("with") == with_jid
        return [i.get("id") for i in d.findall("{%s}item" % NS_HIST)] == ids
    return pred


def any_deleted(st):
    return st.name == "message" and st.xml.find("{%s}deleted" % NS_HIST) is not None


def inbox_push(own_bare, jid, **attrs):
    def pred(st):
        if st.name != "message" or st["type"] != "headline" or str(st["from"]) != own_bare:
            return False
        e = st.xml.find("{%s}entry" % NS_INBOX)
        return (e is not None and e.get("jid") == jid
                and all(e.get(k) == v for k, v in attrs.items()))
    return pred


async def has_features(c, jid, features):
    info = await c.plugin["xep_0030"].get_info(jid=jid, timeout=STEP_TIMEOUT)
    have = info["disco_info"]["features"]
    missing = [f for f in features if f not in have]
    if missing:
        raise RuntimeError("%s missing from the disco#info of %s" % (missing, jid))


async def scenario(args, steps):
    d = args.domain
    a_bare = "%s@%s" % (args.user1, d)
    b_bare = "%s@%s" % (args.user2, d)
    run = uuid.uuid4().hex[:8]

    # 1 -------------------------------------------------------------------
    pc = await login(args, args.user1, "pc")
    phone = await login(args, args.user1, "phone")
    bob = await login(args, args.user2)
    for c in (pc, phone, bob):
        watch(c)
    await has_features(pc, d, [NS_HIST, NS_INBOX])
    await has_features(pc, a_bare, [NS_HIST, NS_INBOX])
    steps.append("1 %s, %s, %s logged in; %s and %s on the server's and the account's disco#info"
                 % (pc.boundjid, phone.boundjid, bob.boundjid, NS_HIST, NS_INBOX))

    # 2 -------------------------------------------------------------------
    sent = []  # (message id, body)
    for i in range(1, 4):
        mid, body = "%s-%d" % (run, i), "history %s chat %d" % (run, i)
        sent.append((mid, body))
        m = bob.make_message(mto=a_bare, mbody=body, mtype="chat")
        m["id"] = mid
        m.append(ET.Element("{%s}markable" % NS_MARKERS))
        m.send()
    sid = {}  # message id -> stanza-id by alice
    for mid, body in sent:
        got = await pc.expect("chat %r" % body, message_from(b_bare, body))
        ids = [e.get("id") for e in got.xml.findall("{%s}stanza-id" % NS_SID)
               if e.get("by") == a_bare]
        if len(ids) != 1 or not ids[0]:
            raise RuntimeError("chat %r reached alice/pc with stanza-ids by alice %s" % (body, ids))
        sid[mid] = ids[0]
    steps.append("2 alice/pc got bob's 3 chats, stanza-ids %s" % [sid[m] for m, _ in sent])

    # 3 -------------------------------------------------------------------
    last_mid = sent[-1][0]
    mk = pc.make_message(mto=b_bare, mtype="chat")
    mk["id"] = "%s-mk" % run
    mk.append(ET.Element("{%s}displayed" % NS_MARKERS, {"id": last_mid}))
    mk.send()

    def the_marker(st):
        return st.name == "message" and st["id"] == "%s-mk" % run
    got = await bob.expect("alice's displayed marker", the_marker)
    disp = got.xml.find("{%s}displayed" % NS_MARKERS)
    if disp is None or disp.get("id") != last_mid or got["from"] != pc.boundjid:
        raise RuntimeError("the marker did not arrive untouched: %s" % got)
    await phone.expect("the inbox push unread='0' after the marker",
                       inbox_push(a_bare, b_bare, unread="0"))
    steps.append("3 bob got the displayed marker untouched; alice/phone the inbox push unread='0'")

    # 4 -------------------------------------------------------------------
    items = await mam(pc, b_bare)
    want = [(sid[mid], body) for mid, body in sent]
    if chats(items) != want or markers(items) != [last_mid] or len(items) != 4:
        raise RuntimeError("alice's MAM with bob: %s, expected the 3 chats %s and the marker"
                           % (list(zip([i for i, _ in items], describe(items))), want))
    steps.append("4 alice/pc's MAM with bob: the 3 chats under their stanza-ids, and the marker")

    # 5 -------------------------------------------------------------------
    gone = sid[sent[1][0]]
    await iq_ok(pc, "set", delete_items(gone), "deleting item %s" % gone)
    await phone.expect("<deleted><item id='%s'/></deleted>" % gone,
                       deleted_note(a_bare, ids=[gone]))
    await quiet(pc, any_deleted, 1.0, "a history notification, though it asked itself")
    steps.append("5 item %s deleted; alice/phone notified, alice/pc not" % gone)

    # 6 -------------------------------------------------------------------
    items = await mam(phone, b_bare)
    if chats(items) != [want[0], want[2]] or markers(items) != [last_mid]:
        raise RuntimeError("alice/phone's MAM with bob after the item delete: %s"
                           % list(zip([i for i, _ in items], describe(items))))
    b_items = await mam(bob, a_bare)
    if chats(b_items) != want or markers(b_items) != [last_mid]:
        raise RuntimeError("bob's MAM with alice changed: %s" % describe(b_items))
    steps.append("6 alice/phone's MAM shows chats 1 and 3 and the marker; bob's still all 3 "
                 "and the marker")

    # 7 -------------------------------------------------------------------
    await iq_error(pc, "set", delete_items(gone), "deleting the deleted item again",
                   "item-not-found")
    await iq_error(pc, "set", delete_items(want[2][0], gone),
                   "deleting a live and the deleted item", "item-not-found")
    await iq_error(pc, "set", delete_items("not-a-number"), "deleting item 'not-a-number'",
                   "item-not-found")
    await iq_error(pc, "set", ET.Element("{%s}delete" % NS_HIST), "<delete/> with neither",
                   "bad-request")
    both = delete_with(b_bare)
    ET.SubElement(both, "{%s}item" % NS_HIST, {"id": want[0][0]})
    await iq_error(pc, "set", both, "<delete/> with both with and an item", "bad-request")
    await iq_error(pc, "set", delete_with(a_bare), "a delete addressed to bob", "forbidden",
                   to=b_bare)
    items = await mam(pc, b_bare)
    if chats(items) != [want[0], want[2]]:
        raise RuntimeError("a refused delete changed alice's MAM: %s" % describe(items))
    steps.append("7 errors: item-not-found (deleted id, alone and with a live one, which stays; "
                 "non-numeric id), bad-request (neither, both), forbidden (bob's JID)")

    # 8 -------------------------------------------------------------------
    await iq_ok(pc, "set", delete_with(b_bare), "deleting the conversation with %s" % b_bare)
    await phone.expect("<deleted with='%s'/>" % b_bare, deleted_note(a_bare, with_jid=b_bare))
    await phone.expect("the inbox push removed='true'",
                       inbox_push(a_bare, b_bare, removed="true"))
    items = await mam(pc, b_bare)
    if items:
        raise RuntimeError("alice's MAM with bob after the whole delete: %s" % describe(items))
    b_items = await mam(bob, a_bare)
    if chats(b_items) != want or markers(b_items) != [last_mid]:
        raise RuntimeError("bob's MAM with alice changed: %s" % describe(b_items))
    steps.append("8 conversation deleted: alice/phone notified (and its inbox entry removed), "
                 "alice's MAM with bob empty, bob's unchanged")

    # 9 -------------------------------------------------------------------
    mid, body = "%s-4" % run, "history %s after the delete" % run
    m = bob.make_message(mto=a_bare, mbody=body, mtype="chat")
    m["id"] = mid
    m.send()
    await pc.expect("the chat after the delete", message_from(b_bare, body))
    items = await mam(pc, b_bare)
    if len(items) != 1 or body_of(items[0][1]) != body:
        raise RuntimeError("alice's MAM with bob after a new chat: %s" % describe(items))
    new_id = items[0][0]

    qid = "ib-" + run
    pc.entries.clear()
    res = await iq_ok(pc, "get", ET.Element("{%s}inbox" % NS_INBOX, {"queryid": qid}),
                      "the inbox query")
    if len(pc.entries) != 1:
        raise RuntimeError("inbox: %d entries, expected 1: %s"
                           % (len(pc.entries), [str(e) for e in pc.entries]))
    entry_msg = pc.entries[0]
    e = entry_msg.xml.find("{%s}entry" % NS_INBOX)
    if e.get("jid") != b_bare or e.get("unread") != "1" or e.get("id") != new_id:
        raise RuntimeError("inbox entry %s, expected jid=%s unread=1 id=%s"
                           % (dict(e.attrib), b_bare, new_id))
    r = entry_msg.xml.find("{%s}result" % NS_MAM)
    inner = None if r is None else r.find("{%s}forwarded/{%s}message" % (NS_FWD, NS_CLIENT))
    if inner is None or body_of(inner) != body or r.get("id") != new_id:
        raise RuntimeError("inbox entry without the last message %r: %s" % (body, entry_msg))
    if r.get("queryid") not in (qid, None):
        raise RuntimeError("inbox entry's result queryid %r, not %r" % (r.get("queryid"), qid))
    fin = res.xml.find("{%s}fin" % NS_INBOX)
    if fin is None:
        raise RuntimeError("inbox answer without <fin/>: %s" % res)
    counts = {k: fin.get(k) for k in ("total", "unread", "all-unread")}
    if counts != {"total": "1", "unread": "1", "all-unread": "1"}:
        raise RuntimeError("inbox <fin/> %s, expected total=1 unread=1 all-unread=1" % counts)
    steps.append("9 a new chat shows again: alice's MAM with bob has it alone (%s); the inbox "
                 "has one entry for bob, unread='1', fin total='1'" % new_id)

    await disconnect_all([pc, phone, bob])


def users(p):
    p.add_argument("--user1", default="hist-alice", help="alice: fresh account, two devices")
    p.add_argument("--user2", default="hist-bob", help="bob: fresh account")


if __name__ == "__main__":
    cli(__doc__, scenario, users)
