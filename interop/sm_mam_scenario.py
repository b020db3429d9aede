#!/usr/bin/python3
"""sm_mam_scenario.py - stream management, archive, stanza-ids and carbons agree.

slixmpp's own XEP-0198, XEP-0313, XEP-0280 and XEP-0359 code against a
running Confab: what a client receives live, what carbons copy, what the
archive pages back and what a resumed stream redelivers must be the same
messages with the same ids. Steps, each with a timeout:

  1. alice/phone and alice/laptop (carbons on) and bob (stream management
     with resumption) log in; the features after auth offer urn:xmpp:sm:3
  2. alice/phone sends 120 chats to bob: he gets each once, in order, each
     with one stanza-id by bob's bare JID; alice/laptop gets 120 sent carbons
  3. bob pages his archive with alice 50 at a time (RSM after=): the 120,
     in order, once each, archive ids = the stanza-ids he received;
     alice/laptop pages hers with bob: the same 120 messages (ids, bodies)
  4. the stanza-id by alice's bare JID in each sent carbon's forwarded
     message (when there is one) is the id alice's archive gives it
  5. bob gets 5 more but answers no <r/> (his <resume/>'s h is all that
     acknowledges them), sends alice a message and his TCP socket is reset
     under him (SO_LINGER 0, no </stream>, no TLS close_notify); alice sends
     him 10 more; bob connects again and resumes (session_resumed, no second
     session_start, no <failed/>): he gets the 10 exactly once, nothing
     the h of his <resume/> acknowledged again, and alice gets his last
     message exactly once
  6. bob's archive after resumption: the 16 messages since step 3 (his own
     last one among them), each once, with the stanza-ids he received
     (nothing archived twice)

Prints one JSON object (the steps passed, figures, or where it stopped)
and exits 0 when every step passed, 1 otherwise. Needs Debian's
python3-slixmpp: run it with /usr/bin/python3.
"""
import asyncio
import socket
import struct
import time
import uuid

import slixmpp
from slixmpp import JID

from c2s_scenario import STEP_TIMEOUT, cli

N = 120          # messages alice/phone sends bob in step 2
PAGE = 50        # MAM page size
BEFORE = 5       # messages bob receives just before his socket dies
AWAY = 10        # messages sent to bob while his socket is gone

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SID = "urn:xmpp:sid:0"
NS_SM = "urn:xmpp:sm:3"
NS_MAM = "urn:xmpp:mam:2"
NS_FWD = "urn:xmpp:forward:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_DELAY = "urn:xmpp:delay"


def stanza_ids(xml, by):
    """The ids of the <stanza-id by=by/> children of a <message/> element."""
    return [e.get("id") for e in xml.findall("{%s}stanza-id" % NS_SID) if e.get("by") == by]


class Client(slixmpp.ClientXMPP):
    """Records chats with a body, sent carbons, SM events and the stream
    features the server offers, for the scenario to check."""

    def __init__(self, jid, password, cafile, prefix, sm=False):
        super().__init__(jid, password)
        self.ca_certs = cafile
        for p in ("xep_0030", "xep_0203", "xep_0280", "xep_0297", "xep_0313", "xep_0359"):
            self.register_plugin(p)
        self.sm = sm
        self.hold_acks = False  # answer no <r/> while set
        self.acked_h = 0        # h of the last <a/> sent
        if sm:
            # allow_resume defaults to True: <enable resume='true'/>.
            self.register_plugin("xep_0198")
            plugin = self.plugin["xep_0198"]
            send_ack = plugin.send_ack

            def ack():
                if not self.hold_acks:
                    self.acked_h = plugin.handled
                    send_ack()
            plugin.send_ack = ack
        self.counts = {}
        self.prefix = prefix  # ids of this run's messages start with it
        self.chats = []     # this run's chats: dicts, in arrival order
        self.others = []    # chats from before this run (offline storage)
        self.carbons = []   # sent carbons: dicts, in arrival order
        self.offered = []  # child tags of each <stream:features/>
        self.enabled = None  # attributes of <enabled/>
        self.resumed = None  # attributes of <resumed/>
        self.started = asyncio.get_event_loop().create_future()
        self.add_filter("in", self._watch)
        for ev in ("session_start", "session_resumed", "sm_enabled", "sm_failed",
                   "disconnected", "session_end", "failed_auth"):
            self.add_event_handler(ev, self._counter(ev))
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", self._on_fail)
        self.add_event_handler("message", self._on_message)
        self.add_event_handler("carbon_sent", self._on_carbon_sent)

    def _counter(self, ev):
        def count(_e):
            self.counts[ev] = self.counts.get(ev, 0) + 1
        return count

    def _watch(self, stanza):
        tag = stanza.xml.tag
        if tag == "{%s}features" % NS_STREAM:
            self.offered.append([c.tag for c in stanza.xml])
        elif tag == "{%s}enabled" % NS_SM:
            self.enabled = dict(stanza.xml.attrib)
        elif tag == "{%s}resumed" % NS_SM:
            self.resumed = dict(stanza.xml.attrib)
        return stanza

    async def _on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _on_fail(self, _event):
        if not self.started.done():
            self.started.set_exception(RuntimeError("%s: authentication failed" % self.boundjid))

    def _on_message(self, msg):
        if msg["type"] != "chat" or not msg["body"]:
            return
        if not msg["id"].startswith(self.prefix):
            self.others.append(msg["body"])
            return
        self.chats.append({
            "from": str(msg["from"]), "id": msg["id"], "body": msg["body"],
            "xml": msg.xml,
            # position in the stream-management count of handled stanzas
            "h": self.plugin["xep_0198"].handled if self.sm else None,
            "delayed": msg.xml.find("{%s}delay" % NS_DELAY) is not None,
        })

    def _on_carbon_sent(self, msg):
        inner = msg.xml.find("{%s}sent/{%s}forwarded/{%s}message" % (NS_CARBONS, NS_FWD, NS_CLIENT))
        if inner is None:
            return
        body = inner.find("{%s}body" % NS_CLIENT)
        self.carbons.append({"outer_from": str(msg["from"]), "id": inner.get("id"),
                             "body": body.text if body is not None else None, "xml": inner})

    def count(self, ev):
        return self.counts.get(ev, 0)


async def until(what, cond, timeout=STEP_TIMEOUT):
    """Poll cond() until it holds; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        await asyncio.sleep(0.02)


async def login(args, user, resource, prefix, sm=False):
    c = Client("%s@%s/%s" % (user, args.domain, resource), args.password, args.cafile,
               prefix, sm=sm)
    c.connect(address=(args.server, args.port), force_starttls=True)
    await asyncio.wait_for(c.started, STEP_TIMEOUT)
    return c


async def round_trip(c, domain):
    """An IQ answered by the server: everything c sent before is processed."""
    await c.plugin["xep_0030"].get_info(jid=domain, timeout=STEP_TIMEOUT)


async def page_archive(c, with_jid, page, after=None):
    """Page forward through c's archive with with_jid (RSM max=page,
    after=last id). Returns ([(archive id, inner <message/>)], [page sizes])."""
    items, sizes = [], []
    seen_complete = False
    for _ in range(10_000 // page + 2):
        rsm = {"max": page}
        if after:
            rsm["after"] = after
        iq = await c.plugin["xep_0313"].retrieve(with_jid=JID(with_jid), rsm=rsm,
                                                 timeout=STEP_TIMEOUT)
        fin = iq.xml.find("{%s}fin" % NS_MAM)
        if fin is None:
            raise RuntimeError("%s: MAM answer without <fin/>: %s" % (c.boundjid, iq))
        results = iq["mam"]["results"]
        got = []
        for r in results:
            res = r.xml.find("{%s}result" % NS_MAM)
            inner = res.find("{%s}forwarded/{%s}message" % (NS_FWD, NS_CLIENT))
            if inner is None:
                raise RuntimeError("%s: MAM result without a forwarded message: %s"
                                   % (c.boundjid, r))
            got.append((res.get("id"), inner))
        if len(got) > page:
            raise RuntimeError("%s: page of %d results for max=%d" % (c.boundjid, len(got), page))
        rset = iq["mam_fin"]["rsm"]
        if got and (rset["first"] != got[0][0] or rset["last"] != got[-1][0]):
            raise RuntimeError("%s: RSM first/last %s/%s but the page runs %s..%s"
                               % (c.boundjid, rset["first"], rset["last"], got[0][0], got[-1][0]))
        items.extend(got)
        sizes.append(len(got))
        complete = fin.get("complete") in ("true", "1")
        if complete or not got:
            seen_complete = complete
            break
        after = got[-1][0]
    if not seen_complete:
        raise RuntimeError("%s: archive paging ended without <fin complete='true'/> (pages %s)"
                           % (c.boundjid, sizes))
    return items, sizes


def pages_str(sizes):
    """[50, 50, 20] -> '50+50+20'; long runs of full pages shortened."""
    if len(sizes) > 4:
        return "%dx%d+%s" % (len(sizes) - 1, sizes[0], sizes[-1])
    return "+".join(str(n) for n in sizes)


def body_of(xml):
    b = xml.find("{%s}body" % NS_CLIENT)
    return b.text if b is not None else None


def reset_socket(c):
    """Drop c's connection the way a dead network does: no </stream:stream>,
    no TLS close_notify; SO_LINGER 0 makes the close a TCP RST."""
    sock = c.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.transport.abort()


async def scenario(args, steps):
    d = args.domain
    a_bare, b_bare = "alice@%s" % d, "bob@%s" % d
    run = uuid.uuid4().hex[:8]  # this run's messages, whatever the archives already hold
    t0 = time.monotonic()

    # 1 -------------------------------------------------------------------
    phone = await login(args, "alice", "phone", run + "-")
    laptop = await login(args, "alice", "laptop", run + "-")
    bob = await login(args, "bob", "pc", run + "-", sm=True)
    for c in (phone, laptop):
        await c.plugin["xep_0280"].enable(timeout=STEP_TIMEOUT)
    await until("bob's <enabled/>", lambda: bob.count("sm_enabled") == 1)
    after_auth = [f for f in bob.offered if "{urn:ietf:params:xml:ns:xmpp-bind}bind" in f]
    if not after_auth or "{%s}sm" % NS_SM not in after_auth[-1]:
        raise RuntimeError("features after auth lack urn:xmpp:sm:3: %s" % after_auth)
    if not bob.enabled or bob.enabled.get("resume") not in ("true", "1") or not bob.enabled.get("id"):
        raise RuntimeError("<enabled/> without resumption: %s" % bob.enabled)
    steps.append("1 %s, %s (carbons), %s (SM, resume id %s..., max %s s)"
                 % (phone.boundjid, laptop.boundjid, bob.boundjid, bob.enabled["id"][:8],
                    bob.enabled.get("max", "?")))

    # 2 -------------------------------------------------------------------
    sent = []  # (id, body) in order
    for i in range(N):
        mid, body = "%s-%03d" % (run, i), "sm-mam %s message %03d" % (run, i)
        sent.append((mid, body))
        m = phone.make_message(mto=b_bare, mbody=body, mtype="chat")
        m["id"] = mid
        m.send()
    await until("bob's %d messages (has %d)" % (N, len(bob.chats)),
                lambda: len(bob.chats) >= N, STEP_TIMEOUT + 10)
    await until("alice/laptop's %d sent carbons (has %d)" % (N, len(laptop.carbons)),
                lambda: len(laptop.carbons) >= N)
    await round_trip(bob, d)
    if len(bob.chats) != N:
        raise RuntimeError("bob got %d messages for %d sent" % (len(bob.chats), N))
    got = [(c["id"], c["body"]) for c in bob.chats]
    if got != sent:
        bad = next(i for i, (x, y) in enumerate(zip(got, sent)) if x != y)
        raise RuntimeError("bob's messages differ from what was sent at #%d: %s != %s"
                           % (bad, got[bad], sent[bad]))
    live_sid = {}  # message id -> stanza-id by bob
    for c in bob.chats:
        if c["from"] != str(phone.boundjid):
            raise RuntimeError("message %s from %s, not %s" % (c["id"], c["from"], phone.boundjid))
        ids = stanza_ids(c["xml"], b_bare)
        if len(ids) != 1 or not ids[0]:
            raise RuntimeError("message %s carries stanza-ids by %s: %s" % (c["id"], b_bare, ids))
        live_sid[c["id"]] = ids[0]
    if len(set(live_sid.values())) != N:
        raise RuntimeError("bob's %d stanza-ids are not distinct" % N)
    steps.append("2 bob got %d/%d in order, each with one stanza-id by %s; laptop %d sent "
                 "carbons (bob also had %d older messages waiting)"
                 % (len(bob.chats), N, b_bare, len(laptop.carbons), len(bob.others)))

    # 3 -------------------------------------------------------------------
    def ours(items):
        return [(aid, m) for aid, m in items if (m.get("id") or "").startswith(run + "-")]

    b_items, b_pages = await page_archive(bob, a_bare, PAGE)
    b_ours = ours(b_items)
    if [(m.get("id"), body_of(m)) for _, m in b_ours] != sent:
        raise RuntimeError("bob's archive with alice: %d of this run's messages, not the %d sent "
                           "in order (pages %s)" % (len(b_ours), N, b_pages))
    if b_items[-N:] != b_ours:
        raise RuntimeError("bob's archive: this run's messages are not the last %d" % N)
    for aid, m in b_ours:
        if aid != live_sid[m.get("id")]:
            raise RuntimeError("bob's archive id %s for %s, but the live stanza-id was %s"
                               % (aid, m.get("id"), live_sid[m.get("id")]))
    if len({aid for aid, _ in b_items}) != len(b_items):
        raise RuntimeError("bob's archive pages repeat ids (pages %s)" % b_pages)

    a_items, a_pages = await page_archive(laptop, b_bare, PAGE)
    a_ours = ours(a_items)
    if [(m.get("id"), body_of(m)) for _, m in a_ours] != sent:
        raise RuntimeError("alice's archive with bob: %d of this run's messages, not the %d sent "
                           "in order (pages %s)" % (len(a_ours), N, a_pages))
    if a_items[-N:] != a_ours or len({aid for aid, _ in a_items}) != len(a_items):
        raise RuntimeError("alice's archive: this run's messages not last, or ids repeat")
    a_mam = {m.get("id"): aid for aid, m in a_ours}
    same = sum(1 for mid, _ in sent if a_mam[mid] == live_sid[mid])
    steps.append("3 bob's archive with alice: %d entries in pages %s, this run's %d in order "
                 "with the live stanza-ids; alice's: %d entries in pages %s, the same %d "
                 "(%d archive ids shared with bob's)"
                 % (len(b_items), pages_str(b_pages), len(b_ours), len(a_items),
                    pages_str(a_pages), len(a_ours), same))

    # 4 -------------------------------------------------------------------
    carbons = laptop.carbons[:N]
    if [(c["id"], c["body"]) for c in carbons] != sent:
        raise RuntimeError("laptop's sent carbons differ from what the phone sent")
    with_sid = 0
    for c in carbons:
        if c["outer_from"] != a_bare:
            raise RuntimeError("carbon of %s from %s, not %s" % (c["id"], c["outer_from"], a_bare))
        ids = stanza_ids(c["xml"], a_bare)
        if len(ids) > 1:
            raise RuntimeError("carbon of %s carries %d stanza-ids by %s" % (c["id"], len(ids), a_bare))
        if ids:
            with_sid += 1
            if ids[0] != a_mam[c["id"]]:
                raise RuntimeError("carbon of %s has stanza-id %s, alice's archive says %s"
                                   % (c["id"], ids[0], a_mam[c["id"]]))
    steps.append("4 %d/%d sent carbons carry a stanza-id by %s, each equal to alice's archive id"
                 % (with_sid, N, a_bare))

    # 5 -------------------------------------------------------------------
    sm = bob.plugin["xep_0198"]
    await round_trip(bob, d)
    # From here to the drop bob answers no <r/>: the h of his <resume/> is
    # the only acknowledgement of what he gets last.
    bob.hold_acks = True
    before = []
    for i in range(BEFORE):
        mid, body = "%s-before-%d" % (run, i), "sm-mam %s before the drop %d" % (run, i)
        before.append((mid, body))
        m = phone.make_message(mto=b_bare, mbody=body, mtype="chat")
        m["id"] = mid
        m.send()
    await until("bob's %d messages before the drop" % BEFORE, lambda: len(bob.chats) >= N + BEFORE)
    await round_trip(bob, d)
    gone_mid, gone_body = "%s-bob-last" % run, "sm-mam %s bob's last words" % run
    m = bob.make_message(mto=phone.boundjid, mbody=gone_body, mtype="chat")
    m["id"] = gone_mid
    m.send()
    await asyncio.sleep(0.05)  # let it reach the socket
    starts, n_before_drop = bob.count("session_start"), len(bob.chats)
    reset_socket(bob)
    await until("bob's disconnected event", lambda: bob.count("disconnected") >= 1)
    h_at_drop, held = sm.handled, sm.handled - bob.acked_h
    await asyncio.sleep(0.3)  # the server sees the reset

    away = []
    for i in range(AWAY):
        mid, body = "%s-away-%d" % (run, i), "sm-mam %s while away %d" % (run, i)
        away.append((mid, body))
        m = phone.make_message(mto=b_bare, mbody=body, mtype="chat")
        m["id"] = mid
        m.send()
    await round_trip(phone, d)

    bob.hold_acks = False  # <a/> again once resumed
    bob.connect(address=(args.server, args.port), force_starttls=True)
    await until("bob's session_resumed (sm_failed %d, session_start %d)"
                % (bob.count("sm_failed"), bob.count("session_start")),
                lambda: bob.count("session_resumed") >= 1 or bob.count("sm_failed")
                or bob.count("session_start") > starts)
    if bob.count("session_resumed") != 1 or bob.count("sm_failed") or bob.count("session_start") != starts:
        raise RuntimeError("bob did not resume: session_resumed %d, sm_failed %d, session_start %d"
                           % (bob.count("session_resumed"), bob.count("sm_failed"),
                              bob.count("session_start")))
    if not bob.resumed or bob.resumed.get("previd") != bob.enabled["id"]:
        raise RuntimeError("<resumed/> %s does not name the stream %s" % (bob.resumed, bob.enabled["id"]))
    post_auth = [f for f in bob.offered[-2:] if "{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms" not in f]
    if not post_auth or "{%s}sm" % NS_SM not in post_auth[-1]:
        raise RuntimeError("features after auth on reconnect lack urn:xmpp:sm:3: %s" % bob.offered[-2:])

    away_ids = {mid for mid, _ in away}
    await until("the %d messages sent while bob was away (has %d)"
                % (AWAY, sum(1 for c in bob.chats if c["id"] in away_ids)),
                lambda: away_ids <= {c["id"] for c in bob.chats})
    await until("bob's last message at alice/phone",
                lambda: any(c["id"] == gone_mid for c in phone.chats))
    await round_trip(bob, d)
    await round_trip(phone, d)
    await asyncio.sleep(0.5)  # room for a duplicate to show up

    after_resume = bob.chats[n_before_drop:]
    seen = {}
    for c in bob.chats:
        seen[c["id"]] = seen.get(c["id"], 0) + 1
    dups = {k: v for k, v in seen.items() if v > 1}
    # Redelivery is allowed only for what bob had not counted in the h of
    # his <resume/> (what the server sent that never reached him).
    allowed = {c["id"] for c in bob.chats[:n_before_drop] if c["h"] > h_at_drop}
    bad = {k: v for k, v in dups.items() if k not in allowed or v > 2}
    if bad:
        raise RuntimeError("bob got again after resuming (resume h=%d, resumed %s): %s"
                           % (h_at_drop, bob.resumed, sorted(bad.items())[:10]))
    if {c["id"] for c in after_resume} - away_ids - allowed:
        raise RuntimeError("bob got unexpected messages after resuming: %s"
                           % sorted({c["id"] for c in after_resume} - away_ids - allowed))
    if [(c["id"], c["body"]) for c in after_resume if c["id"] in away_ids] != away:
        raise RuntimeError("the messages sent while bob was away arrived out of order")
    lw = sum(1 for c in phone.chats if c["id"] == gone_mid)
    if lw != 1:
        raise RuntimeError("alice/phone got bob's last message %d times" % lw)
    delayed = sum(1 for c in after_resume if c["delayed"])
    steps.append("5 socket reset with %d stanzas acknowledged only by <resume h=%d/>; "
                 "resumed (previd matched, <resumed h=%s/>); "
                 "%d/%d sent while away arrived once (%d with a delay stamp), %d earlier ones "
                 "again (%d unacknowledged); bob's last message reached alice once; "
                 "%d session_start in all"
                 % (held, h_at_drop, bob.resumed.get("h") if bob.resumed else "?",
                    len([c for c in after_resume if c["id"] in away_ids]), AWAY, delayed,
                    len(dups), len(allowed), bob.count("session_start")))

    # 6 -------------------------------------------------------------------
    tail, tail_pages = await page_archive(bob, a_bare, PAGE, after=b_ours[-1][0])
    # bob's own message to alice/phone is in his archive with alice too.
    want = before + [(gone_mid, gone_body)] + away
    if [(m.get("id"), body_of(m)) for _, m in tail] != want:
        raise RuntimeError("bob's archive since step 3: %s, expected %s"
                           % ([m.get("id") for _, m in tail], [mid for mid, _ in want]))
    live = {}
    for c in bob.chats:
        ids = stanza_ids(c["xml"], b_bare)
        live.setdefault(c["id"], set()).update(ids)
    for aid, m in tail:
        if m.get("id") != gone_mid and live.get(m.get("id")) != {aid}:
            raise RuntimeError("archive id %s for %s, bob received stanza-ids %s"
                               % (aid, m.get("id"), live.get(m.get("id"))))
    steps.append("6 bob's archive since step 3: the %d messages once each (pages %s), "
                 "with the stanza-ids he received" % (len(tail), pages_str(tail_pages)))

    # slixmpp replaces c.disconnected once it is done: take them first.
    gone = [(c, c.disconnected) for c in (phone, laptop, bob)]
    for c, _ in gone:
        c.disconnect()
    for c, fut in gone:
        try:
            await asyncio.wait_for(fut, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError("%s: no clean disconnect" % c.boundjid)
    steps.append("done in %.1f s" % (time.monotonic() - t0))


def main():
    cli(__doc__, scenario)


if __name__ == "__main__":
    main()
